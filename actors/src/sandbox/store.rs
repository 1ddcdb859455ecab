//! The SandboxActor's journal records.

use super::messages::PodConfig;
use crate::journal::{Kind, Record};
use serde::{Deserialize, Serialize};

/// A pod's life:
///
/// ```text
///   Creating ──run succeeded──> Ready ──stop──> NotReady ──remove──> (gone)
///      └──run failed: rolled back, record removed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Creating,
    Ready,
    NotReady,
}

/// A pod sandbox as berth last recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    /// The reserved name: `<name>_<namespace>_<uid>_<attempt>`.
    pub name: String,
    pub created_unix_nanos: i64,
    #[serde(default)]
    pub config: PodConfig,
    #[serde(default)]
    pub runtime_handler: String,
    #[serde(default = "creating")]
    pub state: SandboxState,
    /// The pod's network namespace; empty for a host-network pod.
    #[serde(default)]
    pub netns_path: String,
    #[serde(default)]
    pub ips: Vec<String>,
    /// The pause process.
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub cgroups_path: String,
}

fn creating() -> SandboxState {
    SandboxState::Creating
}

impl Record for SandboxRecord {
    const KIND: Kind = Kind::Sandbox;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.id.clone()
    }
}
