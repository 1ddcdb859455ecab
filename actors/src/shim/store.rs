//! The ShimSupervisor's journal records.

use crate::journal::{Kind, Record};
use serde::{Deserialize, Serialize};

/// A shim: which container it serves and how to reach it. Journalled
/// before the shim starts (pid 0), and again once it serves, so recovery
/// can find (or clean up after) every shim berth ever started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRecord {
    pub container_id: String,
    /// The shim's pid; 0 until it served.
    pub pid: u32,
    /// The shim's ttrpc socket.
    pub address: String,
    /// The OCI bundle (config.json, and the shim's files: shim.pid, exit).
    #[serde(default)]
    pub bundle: String,
    /// The runtime handler the task runs under.
    #[serde(default)]
    pub runtime_handler: String,
}

impl Record for ShimRecord {
    const KIND: Kind = Kind::Shim;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.container_id.clone()
    }
}
