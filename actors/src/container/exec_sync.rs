//! ExecSync: a command run in a running container by its shim, with a
//! deadline (kubelet's exec probes); the shim's exec does the work.

use super::actor::Containers;
use super::messages::{ExecOutput, ExecSync};
use crate::kernel::Reply;
use crate::shim::messages::ExecInTask;

impl Containers {
    pub(super) fn exec_sync(&mut self, msg: ExecSync) -> Reply<Self, ExecOutput> {
        if let Err(e) = super::validate::exec_command(&msg.cmd) {
            return Reply::Now(Err(e));
        }
        let full = match self.running(&msg.id) {
            Ok(f) => f,
            Err(e) => return Reply::Now(Err(e)),
        };
        let shim = self.deps.shim.clone();
        let exec = ExecInTask {
            id: full,
            args: msg.cmd,
            timeout: msg.timeout,
        };
        Reply::off(async move { shim.call(exec).await })
    }
}
