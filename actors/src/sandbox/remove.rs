//! RemovePodSandbox: what StopPodSandbox does (stop.rs), then the pause
//! task and its shim, the network namespace and the pod files go, and the
//! pod is forgotten. Idempotent: an unknown ID is success.

use super::actor::Sandboxes;
use crate::kernel::Reply;

impl Sandboxes {
    pub(super) fn remove(&mut self, id: String) -> Reply<Self, ()> {
        self.end(id, true)
    }
}
