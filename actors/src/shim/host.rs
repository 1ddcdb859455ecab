//! What the ShimSupervisor does to processes and runtimes when it sorts
//! shims (recovery, the watcher, the sweep): whether a shim lives, killing
//! one, ending a container in its runtime, connecting. Behind a trait so
//! those decisions are tested with a fake node (see recover.rs's tests).

use super::actor::Runtime;
use super::client::ShimClient;
use super::health;
use super::launch;
use super::store::ShimRecord;
use crate::Result;
use futures::future::BoxFuture;
use std::path::Path;

/// The node as shim recovery sees it.
pub(super) trait Processes: Send + Sync + 'static {
    /// A connection to a live shim.
    type Conn: Send + 'static;

    /// Whether `pid` is the living shim of container `id`.
    fn alive(&self, pid: u32, id: &str) -> bool;

    /// SIGKILL to `pid`; one that is gone already is fine.
    fn kill(&self, pid: u32);

    /// Ends container `id` in `runtime`, whatever state it is in.
    fn force_delete(&self, runtime: &Runtime, id: &str);

    /// Connects to the shim a record names.
    fn connect(&self, record: &ShimRecord) -> BoxFuture<'static, Result<Self::Conn>>;

    /// Kills the process in `BUNDLE/shim.pid` if it is the shim of `id`.
    fn kill_shim_of(&self, bundle: &Path, id: &str) {
        if let Ok(pid) = launch::read_shim_pid(bundle) {
            if self.alive(pid, id) {
                self.kill(pid);
            }
        }
    }
}

/// This node: /proc, signals, the runtime's binary, the shim's socket.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Os;

impl Processes for Os {
    type Conn = ShimClient;

    fn alive(&self, pid: u32, id: &str) -> bool {
        health::shim_alive(pid, id)
    }

    fn kill(&self, pid: u32) {
        health::sigkill(pid)
    }

    fn force_delete(&self, runtime: &Runtime, id: &str) {
        health::force_delete(runtime, id)
    }

    fn connect(&self, record: &ShimRecord) -> BoxFuture<'static, Result<ShimClient>> {
        let record = record.clone();
        Box::pin(async move { record.connect().await })
    }
}
