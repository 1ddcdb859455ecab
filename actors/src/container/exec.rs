//! Exec and Attach (the streaming verbs): CRI Exec and Attach check the
//! container runs and hand out a URL ([`RunningContainer`]); the URL's
//! connection runs the command with the client's stdio ([`ExecIn`]), or
//! joins the client to the container's own stdio ([`AttachTo`]), through
//! the shim.

use super::actor::Containers;
use super::messages::{AttachTo, ExecIn, RunningContainer};
use crate::kernel::Reply;
use crate::shim::messages::{AttachStream, ExecStream};

impl Containers {
    pub(super) fn running_container(&mut self, msg: RunningContainer) -> Reply<Self, String> {
        Reply::Now(self.running(&msg.id))
    }

    pub(super) fn exec_in(&mut self, msg: ExecIn) -> Reply<Self, u32> {
        if let Err(e) = super::validate::exec_command(&msg.cmd) {
            return Reply::Now(Err(e));
        }
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

    pub(super) fn attach_to(&mut self, msg: AttachTo) -> Reply<Self, ()> {
        let full = match self.running(&msg.id) {
            Ok(f) => f,
            Err(e) => return Reply::Now(Err(e)),
        };
        let Some(config) = self.records.get(&full).map(|r| r.config.clone()) else {
            return Reply::Now(Err(crate::Error::NotFound(format!(
                "container {full} not found"
            ))));
        };
        let mut io = msg.io;
        if !config.stdin {
            // A container without stdin takes none from an attach.
            io.stdin = None;
        }
        let shim = self.deps.shim.clone();
        let attach = AttachStream {
            id: full,
            io,
            close_stdin: config.stdin_once,
        };
        Reply::off(async move { shim.call(attach).await })
    }
}
