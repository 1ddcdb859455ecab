//! ContainerStatus and ListContainers. IDs may be unique prefixes. A
//! container is reported exited once the ShimSupervisor published its exit
//! (at once from the shim's event, or within a second from its exit
//! record, also for an exit while berthd was down).

use super::actor::Containers;
use super::messages::ListContainers;
use super::store::{ContainerRecord, ContainerState};
use crate::{Error, Result};

impl Containers {
    pub(super) fn resolve(&self, id: &str) -> Option<String> {
        self.records.resolve(id)
    }

    pub(super) fn status(&self, id: &str) -> Result<ContainerRecord> {
        self.resolve(id)
            .and_then(|full| self.records.get(&full).cloned())
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    pub(super) fn list(&self, f: &ListContainers) -> Vec<ContainerRecord> {
        self.records
            .iter()
            .filter(|r| f.with_creating || r.state != ContainerState::Creating)
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
