//! Messages the NetworkActor answers.

use crate::Result;
use actix::Message;

/// Is the pod network ready? Answers [`NetworkReadiness`]; asked by CRI
/// `Status` on every call, so a CNI configuration that appears is noticed
/// without a restart.
#[derive(Debug, Clone, Default)]
pub struct NetworkStatus;

impl Message for NetworkStatus {
    type Result = Result<NetworkReadiness>;
}

/// The CRI `NetworkReady` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkReadiness {
    pub ready: bool,
    /// CamelCase reason when not ready (empty when ready).
    pub reason: String,
    /// What a person can act on.
    pub message: String,
}

/// Who a pod is, for CNI_ARGS (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
/// `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub sandbox_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// Creates and pins the pod's network namespace (journalled first).
/// Answers its path.
#[derive(Debug, Clone)]
pub struct CreateNetns {
    pub sandbox_id: String,
    /// The pod's own user namespace, which then owns the network
    /// namespace (pinned beside it, see `netns::userns_pin`).
    pub userns: Option<crate::userns::IdMap>,
}

impl Message for CreateNetns {
    type Result = Result<String>;
}

/// Runs CNI ADD for the pod in its namespace; answers the pod's IPs
/// (primary first). On failure, what ADD made is released with DEL.
#[derive(Debug, Clone)]
pub struct AttachPod {
    pub pod: PodIdentity,
    pub port_mappings: Vec<super::cni::PortMapping>,
    pub bandwidth: Option<super::cni::Bandwidth>,
}

impl Message for AttachPod {
    type Result = Result<Vec<String>>;
}

/// CNI DEL for the pod (StopPodSandbox); the namespace stays. Idempotent:
/// an unknown or detached pod is success. DEL runs even when the namespace
/// is already gone.
#[derive(Debug, Clone)]
pub struct DetachPod {
    pub sandbox_id: String,
}

impl Message for DetachPod {
    type Result = Result<()>;
}

/// Detaches if needed and removes the namespace and the record
/// (RemovePodSandbox). Idempotent. A DEL that keeps failing does not block
/// the removal: the allocation is kept and DEL retried in the background,
/// so no IP leaks.
#[derive(Debug, Clone)]
pub struct RemovePodNetwork {
    pub sandbox_id: String,
}

impl Message for RemovePodNetwork {
    type Result = Result<()>;
}

/// The node's pod CIDRs from kubelet (UpdateRuntimeConfig), checked by the
/// caller: from now on passed to CNI plugins that declare `ipRanges`.
#[derive(Debug, Clone)]
pub struct SetPodCidrs {
    pub cidrs: Vec<String>,
}

impl Message for SetPodCidrs {
    type Result = Result<()>;
}
