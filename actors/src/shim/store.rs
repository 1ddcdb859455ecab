//! The ShimSupervisor's journal records.

use super::client::{ShimClient, TaskApi};
use crate::journal::{Kind, Record};
use serde::{Deserialize, Serialize};

/// A shim: which container it serves and how to reach it. Journalled
/// before the shim starts (pid 0), and again once it serves, so recovery
/// can find (or clean up after) every shim berth ever started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The task service the shim serves: berth-shim's, or a containerd
    /// runtime v2 shim's.
    #[serde(default)]
    pub api: TaskApi,
    /// A v2 shim may serve a whole pod: the ID it was started for (the
    /// pod's first task), which its command line carries. Empty: the
    /// container's own.
    #[serde(default)]
    pub shim_id: String,
    /// Under a v2 shim, berthd holds the container's stdio: the CRI log it
    /// writes (empty: none), and what the stdio are.
    #[serde(default)]
    pub log_path: String,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub tty: bool,
}

impl ShimRecord {
    /// The ID the shim's command line carries.
    pub fn shim_id(&self) -> &str {
        if self.shim_id.is_empty() {
            &self.container_id
        } else {
            &self.shim_id
        }
    }

    /// `cached`, the connection berthd kept, or a new one.
    pub async fn client(&self, cached: Option<ShimClient>) -> crate::Result<ShimClient> {
        match cached {
            Some(c) => Ok(c),
            None => self.connect().await,
        }
    }

    /// Connects to the shim, with the task service it serves.
    pub async fn connect(&self) -> crate::Result<ShimClient> {
        ShimClient::connect_api(
            &self.container_id,
            std::path::Path::new(&self.address),
            self.api,
        )
        .await
    }
}

impl Record for ShimRecord {
    const KIND: Kind = Kind::Shim;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.container_id.clone()
    }
}
