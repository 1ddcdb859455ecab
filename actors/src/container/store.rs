//! The ContainerActor's journal records.

use super::messages::ContainerConfig;
use crate::journal::{Kind, Record};
use serde::{Deserialize, Serialize};

/// A container's life:
///
/// ```text
///   Creating ──create succeeded──> Created ──start──> Running ──exit/stop──> Exited
///      └──create failed: rolled back, record removed          remove ──> (gone)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Creating,
    Created,
    Running,
    Exited,
}

/// A container as berth last recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    /// The reserved name: `<name>_<pod>_<namespace>_<pod uid>_<attempt>`.
    pub name: String,
    pub created_unix_nanos: i64,
    #[serde(default)]
    pub config: ContainerConfig,
    /// The image ID the container was made from.
    #[serde(default)]
    pub image_id: String,
    #[serde(default = "creating")]
    pub state: ContainerState,
    #[serde(default)]
    pub started_unix_nanos: i64,
    #[serde(default)]
    pub finished_unix_nanos: i64,
    #[serde(default)]
    pub exit_code: i32,
    /// "Completed", "Error", "OOMKilled".
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub pid: u32,
    /// The absolute log file.
    #[serde(default)]
    pub log_path: String,
    /// The effective user: uid, gid, supplemental groups.
    #[serde(default)]
    pub user: (u32, u32, Vec<u32>),
    /// The signal StopContainer sends first.
    #[serde(default)]
    pub stop_signal: i32,
    /// The container's cgroup (stats, OOM kills).
    #[serde(default)]
    pub cgroups_path: String,
}

fn creating() -> ContainerState {
    ContainerState::Creating
}

impl Record for ContainerRecord {
    const KIND: Kind = Kind::Container;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.id.clone()
    }
}
