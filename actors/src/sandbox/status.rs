//! PodSandboxStatus and ListPodSandbox. IDs may be given as unique
//! prefixes, as crictl users do.

use super::actor::Sandboxes;
use super::messages::{ListPodSandbox, TaskExited};
use super::store::{SandboxRecord, SandboxState};
use crate::events::Lifecycle;
use crate::{Error, Result};

impl Sandboxes {
    /// The full ID a (possibly shortened) ID names, if exactly one.
    pub(super) fn resolve(&self, id: &str) -> Option<String> {
        self.records.resolve(id)
    }

    pub(super) fn status(&self, id: &str) -> Result<SandboxRecord> {
        self.resolve(id)
            .and_then(|full| self.records.get(&full).cloned())
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))
    }

    /// A task exited (published by the ShimSupervisor): a ready pod whose
    /// pause container it was is not ready any more. A pod being made or
    /// stopped keeps the exit until its verb is done with it.
    pub(super) fn task_exited(&mut self, exit: TaskExited) -> Result<()> {
        if self.records.get(&exit.id).is_none() {
            return Ok(());
        }
        if self.busy.contains(&exit.id) || self.reserved.values().any(|v| *v == exit.id) {
            self.pending_exits.insert(exit.id.clone(), exit);
            return Ok(());
        }
        self.mark_exited(&exit.id)
    }

    /// The exit kept while a verb ran on the pod, now that it is done.
    pub(super) fn settle_pending(&mut self, id: &str) -> Result<()> {
        match self.pending_exits.remove(id) {
            Some(exit) => self.task_exited(exit),
            None => Ok(()),
        }
    }

    /// Journals that a pod's pause container is gone.
    pub(super) fn mark_exited(&mut self, id: &str) -> Result<()> {
        if let Some(mut r) = self.records.get(id).cloned() {
            if r.state == SandboxState::Ready {
                tracing::warn!(sandbox = %id, "the pause container exited: pod not ready");
                r.state = SandboxState::NotReady;
                self.records.put(r.clone())?;
                self.publish(&r, Lifecycle::Stopped);
            }
        }
        Ok(())
    }

    pub(super) fn list(&self, f: &ListPodSandbox) -> Vec<SandboxRecord> {
        self.records
            .iter()
            .filter(|r| f.with_creating || r.state != SandboxState::Creating)
            .filter(|r| f.id.as_deref().is_none_or(|id| r.id.starts_with(id)))
            .filter(|r| {
                f.ready
                    .is_none_or(|ready| ready == (r.state == SandboxState::Ready))
            })
            .filter(|r| {
                f.labels
                    .iter()
                    .all(|(k, v)| r.config.labels.get(k) == Some(v))
            })
            .cloned()
            .collect()
    }
}
