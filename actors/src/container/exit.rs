//! What happens when a container's process exits: the exit, from the
//! shim's event or its exit record, is journalled with its code and reason
//! (Completed, Error, OOMKilled).

use super::actor::Containers;
use super::store::ContainerState;
use crate::Result;

impl Containers {
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
}
