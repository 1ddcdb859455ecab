//! The NetworkActor's journal records.

use crate::journal::{Kind, Record};
use serde::{Deserialize, Serialize};

/// A pod's network namespace and what CNI gave it. Written before the CNI
/// ADD (intent) and after it (outcome), so recovery can release an
/// allocation a crash left half made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAllocation {
    pub sandbox_id: String,
    /// The pinned netns (bind mount under the state directory).
    pub netns_path: String,
    /// Pod IPs from the CNI result, primary first; empty until ADD succeeded.
    #[serde(default)]
    pub ips: Vec<String>,
}

impl Record for NetworkAllocation {
    const KIND: Kind = Kind::NetworkAllocation;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.sandbox_id.clone()
    }
}
