//! Exec (the streaming one): CRI Exec checks the container runs and
//! hands out a URL ([`RunningContainer`]); the URL's connection runs the
//! command with the client's stdio ([`ExecIn`]) through the shim.

use super::actor::Containers;
use super::messages::{ExecIn, RunningContainer};
use crate::kernel::Reply;
use crate::shim::messages::ExecStream;

impl Containers {
    pub(super) fn running_container(&mut self, msg: RunningContainer) -> Reply<Self, String> {
        Reply::Now(self.running(&msg.id))
    }

    pub(super) fn exec_in(&mut self, msg: ExecIn) -> Reply<Self, u32> {
        let full = match self.running(&msg.id) {
            Ok(f) => f,
            Err(e) => return Reply::Now(Err(e)),
        };
        let shim = self.deps.shim.clone();
        let exec = ExecStream {
            id: full,
            args: msg.cmd,
            io: msg.io,
        };
        Reply::off(async move { shim.call(exec).await })
    }
}
