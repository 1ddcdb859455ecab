//! StartContainer: runs the container's process through its shim (one
//! `runc run --detach`); a container must be Created, and a start whose
//! answer was lost in an actor restart is found running and taken as done.

use super::actor::Containers;
use super::store::ContainerState;
use crate::events::Lifecycle;
use crate::kernel::Reply;
use crate::shim::messages::{StartTask, TaskState};
use crate::{Error, Result};

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
                        // The shim supervisor is restarting: ask again.
                        Err(e @ Error::Unavailable(_)) => Err(e),
                        _ => Err(Error::FailedPrecondition(why)),
                    }
                }
                other => other,
            }
        };
        Reply::later(work, move |me: &mut Self, res: Result<u32>| {
            me.busy.remove(&full);
            let pid = match res {
                Ok(pid) => pid,
                Err(e) => {
                    // Still Created, for StartContainer to retry.
                    me.pending_exits.remove(&full);
                    return Err(e);
                }
            };
            if let Some(mut r) = me.records.get(&full).cloned() {
                r.state = ContainerState::Running;
                r.pid = pid;
                r.started_unix_nanos = started;
                let pod = r.sandbox_id.clone();
                me.records.put(r)?;
                me.publish(&full, &pod, Lifecycle::Started);
            }
            // Its exit may have been reported while it was starting.
            me.settle_pending(&full, true)?;
            Ok(())
        })
    }
}
