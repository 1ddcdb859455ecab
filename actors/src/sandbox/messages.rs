//! Messages the SandboxActor answers, and the pod configuration they carry
//! (the CRI's PodSandboxConfig, in berth's own terms).

use super::store::SandboxRecord;
use crate::network::cni::PortMapping;
use crate::Result;
use actix::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

impl PodMetadata {
    /// The reserved name kubelet's retries collide on:
    /// `<name>_<namespace>_<uid>_<attempt>`.
    pub fn reserved_name(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Whose namespace a pod uses for one kind (the CRI's NamespaceMode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceMode {
    /// The pod's own (shared by its containers).
    #[default]
    Pod,
    /// Each container its own.
    Container,
    /// The host's.
    Node,
    /// Another container's.
    Target,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceOptions {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSecurity {
    pub namespaces: NamespaceOptions,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub privileged: bool,
    /// "", "runtime/default", "unconfined" or "localhost/<path>".
    pub seccomp: String,
    /// The pod's own user namespace (mode POD), with its mapping; none:
    /// the node's.
    #[serde(default)]
    pub user_namespace: Option<crate::userns::IdMap>,
}

/// What kubelet asks of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodConfig {
    pub metadata: PodMetadata,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<DnsConfig>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub sysctls: BTreeMap<String, String>,
    pub security: PodSecurity,
    /// Pod-level resources (kubelet's, and as UpdatePodSandboxResources
    /// changes them).
    #[serde(default)]
    pub resources: Option<crate::container::messages::Resources>,
}

/// Runs a pod (CRI RunPodSandbox): answers its ID.
#[derive(Debug, Clone)]
pub struct RunPodSandbox {
    pub config: PodConfig,
    pub runtime_handler: String,
}

impl Message for RunPodSandbox {
    type Result = Result<String>;
}

/// Stops a pod's containers and pause container and tears its network
/// down (CRI StopPodSandbox). Idempotent; an unknown ID is success.
#[derive(Debug, Clone)]
pub struct StopPodSandbox {
    pub id: String,
}

impl Message for StopPodSandbox {
    type Result = Result<()>;
}

/// Removes a pod and everything it holds (CRI RemovePodSandbox).
/// Idempotent; an unknown ID is success.
#[derive(Debug, Clone)]
pub struct RemovePodSandbox {
    pub id: String,
}

impl Message for RemovePodSandbox {
    type Result = Result<()>;
}

/// One pod (CRI PodSandboxStatus); an unknown ID is NotFound.
#[derive(Debug, Clone)]
pub struct PodSandboxStatus {
    pub id: String,
}

impl Message for PodSandboxStatus {
    type Result = Result<SandboxRecord>;
}

/// Pods matching a filter (CRI ListPodSandbox).
#[derive(Debug, Clone, Default)]
pub struct ListPodSandbox {
    pub id: Option<String>,
    pub ready: Option<bool>,
    pub labels: BTreeMap<String, String>,
    /// Also the pods still being made (never shown to clients).
    pub with_creating: bool,
}

impl Message for ListPodSandbox {
    type Result = Result<Vec<SandboxRecord>>;
}

pub use crate::shim::messages::TaskExited;

/// New pod-level resources for a pod (CRI UpdatePodSandboxResources),
/// checked by the caller.
#[derive(Debug, Clone)]
pub struct UpdatePodResources {
    pub id: String,
    pub resources: crate::container::messages::Resources,
}

impl Message for UpdatePodResources {
    type Result = Result<()>;
}
