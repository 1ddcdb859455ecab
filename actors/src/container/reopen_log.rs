//! ReopenContainerLog: the shim reopens the container's log file (after
//! kubelet rotated it); no line is lost.

use super::actor::Containers;
use crate::kernel::Reply;
use crate::shim::messages::ReopenLog;

impl Containers {
    pub(super) fn reopen_log(&mut self, id: String) -> Reply<Self, ()> {
        let full = match self.running(&id) {
            Ok(f) => f,
            Err(e) => return Reply::Now(Err(e)),
        };
        let shim = self.deps.shim.clone();
        Reply::off(async move { shim.call(ReopenLog { id: full }).await })
    }
}
