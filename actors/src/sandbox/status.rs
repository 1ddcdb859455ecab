//! PodSandboxStatus and ListPodSandbox. IDs may be given as unique
//! prefixes, as crictl users do.

use super::actor::Sandboxes;
use super::messages::ListPodSandbox;
use super::store::{SandboxRecord, SandboxState};
use crate::{Error, Result};

impl Sandboxes {
    /// The full ID a (possibly shortened) ID names, if exactly one.
    pub(super) fn resolve(&self, id: &str) -> Option<String> {
        self.records.resolve(id)
    }

    pub(super) fn status(&mut self, id: &str) -> Result<SandboxRecord> {
        let full = self
            .resolve(id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))?;
        self.refresh(&full)?;
        self.records
            .get(&full)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))
    }

    /// A ready pod whose pause container exited (its shim left an exit
    /// record, also while berthd was down) is not ready any more.
    pub(super) fn refresh(&mut self, id: &str) -> Result<()> {
        let Some(r) = self.records.get(id) else {
            return Ok(());
        };
        if r.state == SandboxState::Ready
            && crate::shim::bundle_dir(&self.deps.config.state, id)
                .join(crate::shim::launch::EXIT_FILE)
                .exists()
        {
            self.mark_exited(id)?;
        }
        Ok(())
    }

    /// Journals that a pod's pause container is gone.
    pub(super) fn mark_exited(&mut self, id: &str) -> Result<()> {
        if let Some(mut r) = self.records.get(id).cloned() {
            if r.state == SandboxState::Ready {
                tracing::warn!(sandbox = %id, "the pause container exited: pod not ready");
                r.state = SandboxState::NotReady;
                self.records.put(r)?;
            }
        }
        Ok(())
    }

    pub(super) fn list(&mut self, f: &ListPodSandbox) -> Vec<SandboxRecord> {
        let ready: Vec<String> = self
            .records
            .iter()
            .filter(|r| r.state == SandboxState::Ready)
            .map(|r| r.id.clone())
            .collect();
        for id in ready {
            if let Err(e) = self.refresh(&id) {
                tracing::warn!(sandbox = %id, error = %e, "cannot record the pod's exit");
            }
        }
        self.records
            .iter()
            .filter(|r| r.state != SandboxState::Creating)
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
