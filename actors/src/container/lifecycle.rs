//! StartContainer, StopContainer, RemoveContainer, and what happens when a
//! container's process exits. Stop and remove are idempotent: an unknown
//! or already stopped container is success, as kubelet retries them.

use super::actor::{ContainerActor, ContainerDeps, Containers};
use super::messages::PodContainers;
use super::store::ContainerState;
use crate::image::messages::RemoveRootfs;
use crate::kernel::Reply;
use crate::shim::messages::{DeleteTask, Exit, StartTask, StopTask, TaskState};
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};
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

fn restarting() -> Error {
    Error::Unavailable("the container actor is restarting; retry".into())
}

impl Containers {
    pub(super) fn start(&mut self, id: String) -> Reply<Self, ()> {
        let Some(full) = self.resolve(&id) else {
            return Reply::Now(Err(Error::NotFound(format!("container {id:?} not found"))));
        };
        let Some(r) = self.records.get(&full).cloned() else {
            return Reply::Now(Err(Error::NotFound(format!("container {id:?} not found"))));
        };
        if r.state != ContainerState::Created {
            return Reply::Now(Err(Error::FailedPrecondition(format!(
                "container {full} is {:?}, not created",
                r.state
            ))));
        }
        if !self.busy.insert(full.clone()) {
            return Reply::Now(Err(Error::Unavailable(format!(
                "container {full} is being changed; retry"
            ))));
        }
        let shim = self.deps.shim.clone();
        let task = full.clone();
        // Taken before the start: a process that ends at once must not
        // look as if it finished before it started.
        let started = crate::journal::unix_nanos();
        let work = async move {
            match shim.call(StartTask { id: task.clone() }).await {
                // A start whose answer was lost (the actor restarted while
                // the task started): the task runs, as it was asked to.
                Err(Error::FailedPrecondition(why)) => {
                    match shim.call(TaskState { id: task }).await {
                        Ok(info) if info.running && info.pid != 0 => Ok(info.pid),
                        _ => Err(Error::FailedPrecondition(why)),
                    }
                }
                other => other,
            }
        };
        Reply::Later(Box::pin(wrap_future(work).map(
            move |res: Result<u32>, act: &mut ContainerActor, _| {
                let me = act.state_mut().ok_or_else(restarting)?;
                me.busy.remove(&full);
                let pid = res?;
                if let Some(mut r) = me.records.get(&full).cloned() {
                    r.state = ContainerState::Running;
                    r.pid = pid;
                    r.started_unix_nanos = started;
                    me.records.put(r)?;
                }
                // Its exit may have been reported while it was starting.
                me.exited(&full, None)?;
                Ok(())
            },
        )))
    }

    /// Stops the container; with `remove`, also deletes its task, its
    /// shim and its root filesystem, and forgets it.
    pub(super) fn stop(&mut self, id: String, timeout: Duration, remove: bool) -> Reply<Self, ()> {
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
        let work = teardown(deps, task, running, signal, timeout, remove);
        Reply::Later(Box::pin(wrap_future(work).map(
            move |res: Result<(String, Option<Exit>)>, act: &mut ContainerActor, _| {
                let me = act.state_mut().ok_or_else(restarting)?;
                me.busy.remove(&full);
                let (_, exit) = res?;
                if remove {
                    me.records.remove(&full)?;
                    return Ok(());
                }
                if let Some(e) = exit {
                    me.record_exit(&full, e.status, e.exited_unix_nanos)?;
                }
                Ok(())
            },
        )))
    }

    /// Journals how a container ended: Completed for 0, else Error.
    pub(super) fn record_exit(&mut self, id: &str, status: u32, at: i64) -> Result<()> {
        let Some(mut r) = self.records.get(id).cloned() else {
            return Ok(());
        };
        if r.state == ContainerState::Exited {
            return Ok(());
        }
        r.state = ContainerState::Exited;
        r.exit_code = status as i32;
        r.finished_unix_nanos = if at > 0 {
            at
        } else {
            crate::journal::unix_nanos()
        };
        // The cgroup is still there (the task is not deleted yet) and
        // tells whether the kernel's OOM killer ended it.
        r.reason = if status == 0 {
            "Completed"
        } else if !r.cgroups_path.is_empty() && super::stats::oom_killed(&r.cgroups_path) {
            "OOMKilled"
        } else {
            "Error"
        }
        .to_string();
        self.records.put(r)?;
        Ok(())
    }

    /// A container's process exited (event or exit record). The exit
    /// record, when there is one, wins over the event's status.
    pub(super) fn exited(&mut self, id: &str, status: Option<u32>) -> Result<()> {
        let Some(r) = self.records.get(id) else {
            return Ok(());
        };
        if r.state != ContainerState::Running || self.busy.contains(id) {
            return Ok(());
        }
        match (self.settle(id)?, status) {
            (false, Some(s)) => self.record_exit(id, s, 0),
            _ => Ok(()),
        }
    }

    /// Stops (and removes) every container of a pod, before the pod. A pod
    /// going away gives its containers no grace.
    pub(super) fn pod_containers(&mut self, msg: PodContainers) -> Reply<Self, ()> {
        let targets: Vec<(String, bool)> = self
            .records
            .iter()
            .filter(|r| r.sandbox_id == msg.sandbox_id && r.state != ContainerState::Creating)
            .filter(|r| !self.busy.contains(&r.id))
            .map(|r| (r.id.clone(), r.state == ContainerState::Running))
            .collect();
        if targets.is_empty() {
            return Reply::Now(Ok(()));
        }
        for (id, _) in &targets {
            self.busy.insert(id.clone());
        }
        let deps = self.deps.clone();
        let remove = msg.remove;
        let jobs = targets.clone().into_iter().map(move |(id, running)| {
            teardown(
                deps.clone(),
                id,
                running,
                libc::SIGKILL,
                Duration::ZERO,
                remove,
            )
        });
        let work = futures::future::join_all(jobs);
        Reply::Later(Box::pin(wrap_future(work).map(
            move |results: Vec<Result<(String, Option<Exit>)>>, act: &mut ContainerActor, _| {
                let me = act.state_mut().ok_or_else(restarting)?;
                for (id, _) in &targets {
                    me.busy.remove(id);
                }
                let mut first_err = None;
                for r in results {
                    match r {
                        Ok((id, _)) if remove => {
                            me.records.remove(&id)?;
                        }
                        Ok((id, Some(e))) => me.record_exit(&id, e.status, e.exited_unix_nanos)?,
                        Ok(_) => {}
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                first_err.map_or(Ok(()), Err)
            },
        )))
    }
}
