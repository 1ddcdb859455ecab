//! StopPodSandbox: kills the pause container and tears the network down
//! (CNI DEL); the pod stays, NotReady. RemovePodSandbox (remove.rs) goes on
//! from here with `remove`. Both are idempotent: an unknown ID is success,
//! as kubelet retries them freely.

use super::actor::Sandboxes;
use super::files::PodFiles;
use super::store::SandboxState;
use crate::events::Lifecycle;
use crate::kernel::Reply;
use crate::network::messages::{DetachPod, RemovePodNetwork};
use crate::shim::messages::{DeleteTask, StopTask};
use crate::{Error, Result};
use std::time::Duration;

/// The pause container ignores nothing but exits at once on SIGKILL.
const PAUSE_STOP: Duration = Duration::from_secs(2);

impl Sandboxes {
    pub(super) fn stop(&mut self, id: String) -> Reply<Self, ()> {
        self.end(id, false)
    }

    /// Stops the pod; with `remove`, also deletes the pause task and its
    /// shim, the network namespace and the pod files, and forgets the pod.
    pub(super) fn end(&mut self, id: String, remove: bool) -> Reply<Self, ()> {
        let Some(id) = self.resolve(&id) else {
            return Reply::Now(Ok(()));
        };
        let Some(record) = self.records.get(&id).cloned() else {
            return Reply::Now(Ok(()));
        };
        if record.state == SandboxState::Creating {
            return Reply::Now(Err(Error::FailedPrecondition(format!(
                "pod sandbox {id} is still being created"
            ))));
        }
        if !self.busy.insert(id.clone()) {
            return Reply::Now(Err(Error::Unavailable(format!(
                "another stop or remove of pod sandbox {id} is under way; retry"
            ))));
        }
        let deps = self.deps.clone();
        let has_netns = !record.netns_path.is_empty();
        let task_id = id.clone();
        let work = async move {
            // The pause container and the network go at once: neither
            // waits for the other.
            let kill = deps.shim.call(StopTask {
                id: task_id.clone(),
                signal: libc::SIGKILL,
                timeout: PAUSE_STOP,
            });
            let teardown = async {
                if !has_netns {
                    Ok(())
                } else if remove {
                    let msg = RemovePodNetwork {
                        sandbox_id: task_id.clone(),
                    };
                    deps.network.call(msg).await
                } else {
                    let msg = DetachPod {
                        sandbox_id: task_id.clone(),
                    };
                    deps.network.call(msg).await
                }
            };
            let (stopped, network) = futures::join!(kill, teardown);
            let stopped = stopped.map(|_| ());
            if remove {
                deps.shim
                    .call(DeleteTask {
                        id: task_id.clone(),
                    })
                    .await?;
                let files = PodFiles::new(&deps.config.state, &task_id);
                tokio::task::spawn_blocking(move || files.remove())
                    .await
                    .map_err(|e| Error::Internal(format!("pod files task: {e}")))??;
            }
            stopped.and(network)
        };
        Reply::later(work, move |me: &mut Self, res: Result<()>| {
            me.busy.remove(&id);
            // The pod is not ready after a stop either way.
            me.pending_exits.remove(&id);
            if remove && res.is_ok() {
                if let Some(mut r) = me.records.remove(&id)? {
                    r.state = SandboxState::NotReady;
                    me.publish(&r, Lifecycle::Deleted);
                }
                tracing::info!(sandbox = %id, "pod sandbox removed");
                return Ok(());
            }
            if let Some(mut r) = me.records.get(&id).cloned() {
                // The pause container is gone either way: the pod is
                // not ready, even if the network teardown must be
                // retried.
                if r.state != SandboxState::NotReady {
                    r.state = SandboxState::NotReady;
                    me.records.put(r.clone())?;
                    me.publish(&r, Lifecycle::Stopped);
                }
            }
            res
        })
    }
}
