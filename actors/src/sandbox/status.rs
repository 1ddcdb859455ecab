//! PodSandboxStatus and ListPodSandbox. IDs may be given as unique
//! prefixes, as crictl users do.

use super::actor::Sandboxes;
use super::messages::ListPodSandbox;
use super::store::{SandboxRecord, SandboxState};
use crate::{Error, Result};

impl Sandboxes {
    /// The full ID a (possibly shortened) ID names, if exactly one.
    pub(super) fn resolve(&self, id: &str) -> Option<String> {
        if id.is_empty() {
            return None;
        }
        if self.records.get(id).is_some() {
            return Some(id.to_string());
        }
        let mut matches = self.records.iter().filter(|r| r.id.starts_with(id));
        let first = matches.next()?;
        matches.next().is_none().then(|| first.id.clone())
    }

    pub(super) fn status(&self, id: &str) -> Result<SandboxRecord> {
        self.resolve(id)
            .and_then(|full| self.records.get(&full).cloned())
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))
    }

    pub(super) fn list(&self, f: &ListPodSandbox) -> Vec<SandboxRecord> {
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
