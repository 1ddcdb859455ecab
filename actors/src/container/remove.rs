//! RemoveContainer, and the stop or removal of every container of a pod
//! (the first step of StopPodSandbox and RemovePodSandbox). Removal is
//! idempotent: an unknown container is success, as kubelet retries it.

use super::actor::Containers;
use super::messages::PodContainers;
use super::stop::teardown;
use super::store::ContainerState;
use crate::kernel::Reply;
use crate::shim::messages::Exit;
use crate::Result;
use std::time::Duration;

impl Containers {
    /// RemoveContainer: killed at once if it still runs, then its task,
    /// shim, root filesystem and record go.
    pub(super) fn remove(&mut self, id: String) -> Reply<Self, ()> {
        self.end(id, Duration::ZERO, true)
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
        Reply::later(
            work,
            move |me: &mut Self, results: Vec<Result<(String, Option<Exit>)>>| {
                for (id, _) in &targets {
                    me.busy.remove(id);
                }
                let mut first_err = None;
                for r in results {
                    match r {
                        Ok((id, _)) if remove => {
                            me.pending_exits.remove(&id);
                            me.forget(&id)?;
                        }
                        Ok((id, Some(e))) => {
                            me.pending_exits.remove(&id);
                            me.record_exit(&id, e.status, e.exited_unix_nanos, None)?
                        }
                        Ok(_) => {}
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                // Exits kept for containers whose teardown said nothing.
                for (id, _) in &targets {
                    me.settle_pending(id, true)?;
                }
                first_err.map_or(Ok(()), Err)
            },
        )
    }
}
