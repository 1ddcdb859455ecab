//! ContainerStatus and ListContainers. IDs may be unique prefixes. A
//! running container whose shim left an exit record (it exited, maybe
//! while berthd was down) is reported exited with its real code: by
//! ContainerStatus at once, by ListContainers once the exit event arrived
//! or, without one, within a second.

use super::actor::Containers;
use super::messages::ListContainers;
use super::store::{ContainerRecord, ContainerState};
use crate::{Error, Result};

impl Containers {
    pub(super) fn resolve(&self, id: &str) -> Option<String> {
        self.records.resolve(id)
    }

    pub(super) fn status(&mut self, id: &str) -> Result<ContainerRecord> {
        let full = self
            .resolve(id)
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))?;
        self.exited(&full, None)?;
        self.records
            .get(&full)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    /// Records the exits shims left for running containers whose exit
    /// event berthd did not get (run every second, so that a list never
    /// reads 200 files).
    pub(super) fn settle_running(&mut self) {
        let running: Vec<String> = self
            .records
            .iter()
            .filter(|r| r.state == ContainerState::Running)
            .map(|r| r.id.clone())
            .collect();
        for id in running {
            if let Err(e) = self.exited(&id, None) {
                tracing::warn!(container = %id, error = %e, "cannot record the exit");
            }
        }
    }

    pub(super) fn list(&self, f: &ListContainers) -> Vec<ContainerRecord> {
        self.records
            .iter()
            .filter(|r| r.state != ContainerState::Creating)
            .filter(|r| f.id.as_deref().is_none_or(|id| r.id.starts_with(id)))
            .filter(|r| {
                f.sandbox_id
                    .as_deref()
                    .is_none_or(|p| r.sandbox_id.starts_with(p))
            })
            .filter(|r| f.state.is_none_or(|s| s == r.state))
            .filter(|r| {
                f.labels
                    .iter()
                    .all(|(k, v)| r.config.labels.get(k) == Some(v))
            })
            .cloned()
            .collect()
    }
}
