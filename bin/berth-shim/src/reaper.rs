//! Every child exit passes through here.
//!
//! As a child subreaper the shim inherits the container's processes and must
//! reap them all, so one `waitpid(-1)` loop runs on each SIGCHLD and nobody
//! else calls `wait`. Whoever cares about a pid registers a callback:
//! processes the shim spawns (runc) are registered while the table is locked
//! around the spawn, so their exit cannot slip past; processes it learns of
//! later from a pid file (the container's init, exec'd processes) may have
//! exited already, so unclaimed exits are kept for a while, each stamped with
//! a sequence number so that a stale exit of a recycled pid is not mistaken
//! for the new process's.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::{HashMap, VecDeque};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

/// How a process ended: its exit code, or 128 + the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

pub type OnExit = Box<dyn FnOnce(Exit) + Send>;

/// Unclaimed exits kept; only the newest matter (a pid file is read right
/// after the process was started).
const UNCLAIMED_MAX: usize = 128;

#[derive(Default)]
pub struct Reaper {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    watchers: HashMap<i32, OnExit>,
    unclaimed: VecDeque<(i32, Exit, u64)>,
    seq: u64,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in a callback never happens under this lock, so a
        // poisoned lock still holds consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `cmd` and registers `on_exit` for it before any exit can be
    /// reaped. The returned `Child` must not be waited on.
    pub fn spawn(&self, cmd: &mut Command, on_exit: OnExit) -> std::io::Result<Child> {
        let mut inner = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // An unclaimed exit of the same pid belongs to an earlier process.
        inner.unclaimed.retain(|(p, _, _)| *p != pid);
        inner.watchers.insert(pid, on_exit);
        Ok(child)
    }

    /// A point in the sequence of exits: exits reaped after it count for
    /// [`Reaper::watch`]. Take it before starting the process to watch.
    pub fn mark(&self) -> u64 {
        self.lock().seq
    }

    /// Calls `on_exit` when `pid` exits, or now if it exited after `since`.
    /// Must not be called with a lock held that `on_exit` takes.
    pub fn watch(&self, pid: i32, since: u64, on_exit: OnExit) {
        let mut inner = self.lock();
        let found = inner
            .unclaimed
            .iter()
            .position(|(p, _, seq)| *p == pid && *seq > since);
        match found.and_then(|i| inner.unclaimed.remove(i)) {
            Some((_, exit, _)) => {
                drop(inner);
                on_exit(exit);
            }
            None => {
                inner.watchers.insert(pid, on_exit);
            }
        }
    }

    /// Reaps every child that has exited; call on SIGCHLD.
    pub fn reap(&self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code as u32),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid.as_raw(), 128 + signal as u32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                // Stops and continues are not asked for; nothing to do.
                Ok(_) => continue,
                Err(e) => {
                    log::warn!("waitpid failed: {e}");
                    return;
                }
            };
            self.deliver(pid, status);
        }
    }

    fn deliver(&self, pid: i32, status: u32) {
        let exit = Exit {
            status,
            at: SystemTime::now(),
        };
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        match inner.watchers.remove(&pid) {
            Some(on_exit) => {
                drop(inner);
                on_exit(exit);
            }
            None => {
                if inner.unclaimed.len() == UNCLAIMED_MAX {
                    inner.unclaimed.pop_front();
                }
                inner.unclaimed.push_back((pid, exit, seq));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn recorder() -> (OnExit, mpsc::Receiver<Exit>) {
        let (tx, rx) = mpsc::channel();
        (
            Box::new(move |e| {
                let _ = tx.send(e);
            }),
            rx,
        )
    }

    #[test]
    fn watchers_and_unclaimed_exits() {
        let r = Reaper::default();
        let (cb, rx) = recorder();
        r.watch(10, r.mark(), cb);
        r.deliver(10, 3);
        assert_eq!(rx.try_recv().expect("delivered").status, 3);

        // An exit before anyone watches waits for the watcher...
        let since = r.mark();
        r.deliver(11, 137);
        let (cb, rx) = recorder();
        r.watch(11, since, cb);
        assert_eq!(rx.try_recv().expect("kept").status, 137);

        // ...unless it happened before the watched process was started.
        r.deliver(12, 1);
        let since = r.mark();
        let (cb, rx) = recorder();
        r.watch(12, since, cb);
        assert!(rx.try_recv().is_err());
        r.deliver(12, 0);
        assert_eq!(rx.try_recv().expect("the new one").status, 0);
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let r = Reaper::default();
        for pid in 0..(UNCLAIMED_MAX as i32 + 10) {
            r.deliver(pid, 0);
        }
        assert_eq!(r.lock().unclaimed.len(), UNCLAIMED_MAX);
    }
}
