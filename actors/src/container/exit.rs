//! What happens when a container's process exits: the exit, published by
//! the ShimSupervisor (from the shim's event or its exit record), is
//! journalled with its code, time and reason (Completed, Error,
//! OOMKilled), and the note berthd left for a shim that died.

use super::actor::Containers;
use super::store::ContainerState;
use crate::events::Lifecycle;
use crate::shim::messages::TaskExited;
use crate::Result;

impl Containers {
    /// Journals how a container ended: Completed for 0, else Error.
    pub(super) fn record_exit(
        &mut self,
        id: &str,
        status: u32,
        at: i64,
        note: Option<String>,
    ) -> Result<()> {
        self.record_exit_as(id, status, at, note, None)
    }

    /// [`Self::record_exit`], with whether the OOM killer ended it when
    /// that was read before the runtime's container went (a stop deletes
    /// it before answering, so it is not deleted again here).
    pub(super) fn record_exit_as(
        &mut self,
        id: &str,
        status: u32,
        at: i64,
        note: Option<String>,
        oom_killed: Option<bool>,
    ) -> Result<()> {
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
        let oom = || {
            oom_killed.unwrap_or_else(|| {
                !r.cgroups_path.is_empty() && super::stats::oom_killed(&r.cgroups_path)
            })
        };
        r.reason = if status == 0 {
            "Completed"
        } else if oom() {
            "OOMKilled"
        } else {
            "Error"
        }
        .to_string();
        if let Some(note) = note {
            r.message = note;
        }
        let pod = r.sandbox_id.clone();
        self.records.put(r)?;
        self.publish(id, &pod, Lifecycle::Stopped);
        // The runtime's container goes now that the reason is known (its
        // cgroup goes with it), as containerd deletes a task at its exit:
        // RemoveContainer later has less to do. A caller that read the
        // reason itself deleted it already.
        if oom_killed.is_none() {
            let (shim, task) = (self.deps.shim.clone(), id.to_string());
            actix::spawn(async move {
                let _ = shim
                    .call(crate::shim::messages::ReapTask { id: task })
                    .await;
            });
        }
        Ok(())
    }

    /// A task exited. A container being started or stopped keeps the
    /// exit until its verb is done ([`Self::settle_pending`]); one created
    /// or running is exited now; any other task is not a container's.
    pub(super) fn task_exited(&mut self, exit: TaskExited) -> Result<()> {
        let Some(r) = self.records.get(&exit.id) else {
            return Ok(());
        };
        if self.busy.contains(&exit.id) {
            self.pending_exits.insert(exit.id.clone(), exit);
            return Ok(());
        }
        if !matches!(r.state, ContainerState::Created | ContainerState::Running) {
            return Ok(());
        }
        self.record_exit(&exit.id, exit.status, exit.exited_at_unix_nanos, exit.note)
    }

    /// The exit kept while a verb ran on the container, now that it is
    /// done (or dropped, with `keep` false, when the verb ended the
    /// container itself).
    pub(super) fn settle_pending(&mut self, id: &str, keep: bool) -> Result<()> {
        match self.pending_exits.remove(id) {
            Some(exit) if keep => self.task_exited(exit),
            _ => Ok(()),
        }
    }
}
