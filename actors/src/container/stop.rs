//! StopContainer, and the teardown RemoveContainer and a pod's stop or
//! removal share. Stop is idempotent: an unknown or already stopped
//! container is success, as kubelet retries it.

use super::actor::{ContainerDeps, Containers};
use super::store::ContainerState;
use crate::image::messages::RemoveRootfs;
use crate::kernel::Reply;
use crate::shim::messages::{DeleteTask, Exit, StopTask};
use crate::{Error, Result};
use std::time::Duration;

/// Ends a container's process (if `running`: `signal`, then SIGKILL after
/// `timeout`), and with `remove` deletes its task and shim and its root
/// filesystem, side by side: the process has ended, so nothing uses the
/// mount any more. Answers how the process ended, when it was running.
pub(super) async fn teardown(
    deps: ContainerDeps,
    id: String,
    running: bool,
    signal: i32,
    timeout: Duration,
    remove: bool,
) -> Result<(String, Option<Exit>)> {
    let exit = if running {
        deps.shim
            .call(StopTask {
                id: id.clone(),
                signal,
                timeout,
            })
            .await?
    } else {
        None
    };
    if remove {
        let (task_gone, rootfs_gone) = futures::join!(
            deps.shim.call(DeleteTask { id: id.clone() }),
            deps.image.call(RemoveRootfs {
                container_id: id.clone(),
            })
        );
        task_gone.and(rootfs_gone)?;
    }
    Ok((id, exit))
}

/// After a stop ended the container: whether the OOM killer did (read
/// while the cgroup is there), then the runtime's container deleted
/// before StopContainer answers, as containerd's stop deletes the task:
/// RemoveContainer then has little left to do.
async fn reap(deps: &ContainerDeps, id: &str, cgroups_path: String) -> bool {
    let oom = tokio::task::spawn_blocking(move || {
        !cgroups_path.is_empty() && super::stats::oom_killed(&cgroups_path)
    })
    .await
    .unwrap_or(false);
    let _ = deps
        .shim
        .call(crate::shim::messages::ReapTask { id: id.to_string() })
        .await;
    oom
}

impl Containers {
    /// StopContainer: the stop signal, then SIGKILL after `timeout`.
    pub(super) fn stop(&mut self, id: String, timeout: Duration) -> Reply<Self, ()> {
        self.end(id, timeout, false)
    }

    /// Stops the container; with `remove` (RemoveContainer), also deletes
    /// its task, its shim and its root filesystem, and forgets it.
    pub(super) fn end(&mut self, id: String, timeout: Duration, remove: bool) -> Reply<Self, ()> {
        let Some(full) = self.resolve(&id) else {
            return Reply::Now(Ok(()));
        };
        let Some(r) = self.records.get(&full).cloned() else {
            return Reply::Now(Ok(()));
        };
        if r.state == ContainerState::Creating {
            return Reply::Now(Err(Error::FailedPrecondition(format!(
                "container {full} is still being created"
            ))));
        }
        if !remove && r.state != ContainerState::Running {
            return Reply::Now(Ok(()));
        }
        if !self.busy.insert(full.clone()) {
            return Reply::Now(Err(Error::Unavailable(format!(
                "container {full} is being changed; retry"
            ))));
        }
        let deps = self.deps.clone();
        let task = full.clone();
        let signal = if remove {
            libc::SIGKILL
        } else {
            r.stop_signal.max(1)
        };
        let running = r.state == ContainerState::Running;
        let cgroups_path = r.cgroups_path.clone();
        let work = async move {
            let (id, exit) = teardown(deps.clone(), task, running, signal, timeout, remove).await?;
            let oom = match (&exit, remove) {
                (Some(_), false) => Some(reap(&deps, &id, cgroups_path).await),
                _ => None,
            };
            Ok((id, exit, oom))
        };
        Reply::later(
            work,
            move |me: &mut Self, res: Result<(String, Option<Exit>, Option<bool>)>| {
                me.busy.remove(&full);
                let (_, exit, oom) = match res {
                    Ok(done) => done,
                    Err(e) => {
                        // It may have exited all the same.
                        me.settle_pending(&full, true)?;
                        return Err(e);
                    }
                };
                if remove {
                    me.pending_exits.remove(&full);
                    me.forget(&full)?;
                    return Ok(());
                }
                // The stop's own account of the exit wins over a report.
                match exit {
                    Some(e) => {
                        me.pending_exits.remove(&full);
                        me.record_exit_as(&full, e.status, e.exited_unix_nanos, None, oom)?;
                    }
                    None => me.settle_pending(&full, true)?,
                }
                Ok(())
            },
        )
    }
}
