//! The NetworkActor's journal records.

use crate::journal::{Kind, Record};
use serde::{Deserialize, Serialize};

/// A pod's network namespace and what CNI gave it. Written before anything
/// is made (intent: the netns path), after CNI ADD (the result and the
/// network list it used, for DEL), and removed once the namespace is gone
/// and DEL succeeded, so recovery can finish or undo half-done work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkAllocation {
    pub sandbox_id: String,
    /// The pinned netns (bind mount under the state directory).
    pub netns_path: String,
    /// Pod IPs from the CNI result, primary first; empty until ADD succeeded.
    #[serde(default)]
    pub ips: Vec<String>,
    /// The CNI result of ADD (for CHECK and DEL).
    #[serde(default)]
    pub result: serde_json::Value,
    /// The network list ADD used (DEL uses the same, whatever the
    /// configuration directory holds by then).
    #[serde(default)]
    pub list: serde_json::Value,
    /// What CNI_ARGS ADD passed (DEL passes the same).
    #[serde(default)]
    pub args: Vec<(String, String)>,
    /// ADD succeeded and DEL has not yet.
    #[serde(default)]
    pub attached: bool,
    /// The pod is removed but DEL kept failing: retried in the background
    /// until it succeeds, so the IP is released.
    #[serde(default)]
    pub removed: bool,
    /// The port mappings ADD configured (DEL passes them again).
    #[serde(default)]
    pub port_mappings: Vec<super::cni::PortMapping>,
    /// The pod CIDRs ADD passed as `ipRanges` (DEL passes them again).
    #[serde(default)]
    pub ip_ranges: Vec<String>,
}

impl Record for NetworkAllocation {
    const KIND: Kind = Kind::NetworkAllocation;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.sandbox_id.clone()
    }
}

/// A pod whose network this berthd released (CNI DEL succeeded). An IP
/// still reserved for it leaked; one reserved for a pod this berthd never
/// had belongs to someone else sharing the IPAM store. The newest
/// [`RELEASED_KEPT`] are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedAllocation {
    pub sandbox_id: String,
    pub released_unix_nanos: i64,
}

/// Released pods remembered for fsck.
pub const RELEASED_KEPT: usize = 4096;

impl Record for ReleasedAllocation {
    const KIND: Kind = Kind::NetworkReleased;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        self.sandbox_id.clone()
    }
}

/// The node's network settings kubelet gave (UpdateRuntimeConfig), kept
/// across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkSettings {
    /// The node's pod CIDRs (one per address family), passed to CNI
    /// plugins that declare the `ipRanges` capability.
    pub pod_cidrs: Vec<String>,
}

/// The one key of [`NetworkSettings`].
pub const SETTINGS_KEY: &str = "node";

impl Record for NetworkSettings {
    const KIND: Kind = Kind::NetworkSettings;
    const VERSION: u32 = 1;

    fn key(&self) -> String {
        SETTINGS_KEY.to_string()
    }
}
