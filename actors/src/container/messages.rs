//! Messages the ContainerActor answers, and the container configuration
//! they carry (the CRI's ContainerConfig, in berth's own terms).

use crate::sandbox::messages::{NamespaceMode, PodSecurity};
use crate::Result;
use actix::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    #[default]
    Private,
    /// rslave: host mounts propagate into the container.
    HostToContainer,
    /// rshared: both ways.
    Bidirectional,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountConfig {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    /// Recursive read-only, where the kernel allows it.
    pub recursive_read_only: bool,
    pub propagation: Propagation,
    /// An image volume: this image's files, read-only, instead of a host
    /// path.
    #[serde(default)]
    pub image: String,
    /// The directory of the image to mount (relative; empty: all of it).
    #[serde(default)]
    pub image_sub_path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    pub container_path: String,
    pub host_path: String,
    /// "r", "w", "m" in any combination.
    pub permissions: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub memory_swap_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    /// Page size ("2MB", "1GB") to limit in bytes.
    pub hugepage_limits: BTreeMap<String, u64>,
    /// cgroup v2 keys.
    pub unified: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupplementalGroupsPolicy {
    /// The groups /etc/group gives the user too.
    #[default]
    Merge,
    /// Only the groups named.
    Strict,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSecurity {
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    pub privileged: bool,
    pub pid_namespace: NamespaceMode,
    /// The container whose PID namespace a Target mode joins.
    pub target_id: String,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub supplemental_groups_policy: SupplementalGroupsPolicy,
    pub no_new_privs: bool,
    /// Empty: the runtime's defaults.
    pub masked_paths: Option<Vec<String>>,
    pub readonly_paths: Option<Vec<String>>,
    /// "", "runtime/default", "unconfined" or "localhost/<path>".
    pub seccomp: String,
}

/// What kubelet asks of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub name: String,
    pub attempt: u32,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<MountConfig>,
    pub devices: Vec<DeviceConfig>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Relative to the pod's log directory.
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub resources: Resources,
    pub security: ContainerSecurity,
    /// A signal number; 0 for the image's STOPSIGNAL, or SIGTERM.
    pub stop_signal: i32,
}

/// What the image says about how to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRun {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
}

/// Everything the OCI spec of a container is made from.
#[derive(Debug, Clone)]
pub struct SpecInputs {
    pub id: String,
    pub config: ContainerConfig,
    pub image: ImageRun,
    /// The mounted root filesystem (its /etc/passwd and /etc/group name the
    /// users).
    pub rootfs: std::path::PathBuf,
    /// The pod's pause process: its namespaces are joined.
    pub pod_pid: u32,
    /// For a Target PID namespace: the target container's process.
    pub target_pid: Option<u32>,
    pub pod_security: PodSecurity,
    /// The pod's shared files.
    pub hostname_file: std::path::PathBuf,
    pub hosts_file: std::path::PathBuf,
    pub resolv_conf: std::path::PathBuf,
    /// None when the pod uses the host's IPC (then /dev/shm is the host's).
    pub shm: Option<std::path::PathBuf>,
    pub cgroups_path: String,
    pub sysctls: BTreeMap<String, String>,
    /// What this node offers: berthd's capabilities, hugetlb, rro mounts.
    pub host: std::sync::Arc<crate::host::HostFacts>,
    /// The pod's runtime handler ("" is the default).
    pub runtime_handler: String,
}

/// Creates a container in a pod (CRI CreateContainer): answers its ID.
#[derive(Debug, Clone)]
pub struct CreateContainer {
    pub pod_sandbox_id: String,
    pub config: ContainerConfig,
}

impl Message for CreateContainer {
    type Result = Result<String>;
}

/// Starts a created container (CRI StartContainer).
#[derive(Debug, Clone)]
pub struct StartContainer {
    pub id: String,
}

impl Message for StartContainer {
    type Result = Result<()>;
}

/// Stops a container: its stop signal, then SIGKILL after `timeout`
/// (CRI StopContainer). Idempotent; an unknown ID is success.
#[derive(Debug, Clone)]
pub struct StopContainer {
    pub id: String,
    pub timeout: std::time::Duration,
}

impl Message for StopContainer {
    type Result = Result<()>;
}

/// Removes a container, stopping it first if it runs (CRI
/// RemoveContainer). Idempotent; an unknown ID is success.
#[derive(Debug, Clone)]
pub struct RemoveContainer {
    pub id: String,
}

impl Message for RemoveContainer {
    type Result = Result<()>;
}

/// One container (CRI ContainerStatus); an unknown ID is NotFound.
#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub id: String,
}

impl Message for ContainerStatus {
    type Result = Result<super::store::ContainerRecord>;
}

/// Containers matching a filter (CRI ListContainers).
#[derive(Debug, Clone, Default)]
pub struct ListContainers {
    pub id: Option<String>,
    pub sandbox_id: Option<String>,
    pub state: Option<super::store::ContainerState>,
    pub labels: BTreeMap<String, String>,
    /// Also the containers still being created (never shown to clients).
    pub with_creating: bool,
}

impl Message for ListContainers {
    type Result = Result<Vec<super::store::ContainerRecord>>;
}

/// Stops (and with `remove`, removes) every container of a pod, before the
/// pod itself is stopped or removed.
#[derive(Debug, Clone)]
pub struct PodContainers {
    pub sandbox_id: String,
    pub remove: bool,
}

impl Message for PodContainers {
    type Result = Result<()>;
}

/// Runs a command in a running container and waits for it, killed at the
/// deadline (CRI ExecSync: kubelet's exec probes). Zero: no deadline.
#[derive(Debug, Clone)]
pub struct ExecSync {
    pub id: String,
    pub cmd: Vec<String>,
    pub timeout: std::time::Duration,
}

impl Message for ExecSync {
    type Result = Result<ExecOutput>;
}

pub use crate::shim::messages::ExecOutput;

/// The full ID of a container that runs (CRI Exec and Attach check this
/// before they hand out a URL); FAILED_PRECONDITION if it does not run.
#[derive(Debug, Clone)]
pub struct RunningContainer {
    pub id: String,
}

impl Message for RunningContainer {
    type Result = Result<String>;
}

/// Runs a command in a running container with the client's live stdio
/// (CRI Exec's URL, opened); answers the exit status.
pub struct ExecIn {
    pub id: String,
    pub cmd: Vec<String>,
    pub io: berth_stream::ProcessIo,
}

impl Message for ExecIn {
    type Result = Result<u32>;
}

/// Joins the client's live stdio to a running container's own (CRI
/// Attach's URL, opened).
pub struct AttachTo {
    pub id: String,
    pub io: berth_stream::ProcessIo,
}

impl Message for AttachTo {
    type Result = Result<()>;
}

/// Applies new resources to a running container (CRI
/// UpdateContainerResources), and keeps them in its record.
#[derive(Debug, Clone)]
pub struct UpdateContainerResources {
    pub id: String,
    pub resources: Resources,
}

impl Message for UpdateContainerResources {
    type Result = Result<()>;
}

/// Reopens a running container's log file (CRI ReopenContainerLog), after
/// kubelet renamed it for rotation.
#[derive(Debug, Clone)]
pub struct ReopenContainerLog {
    pub id: String,
}

impl Message for ReopenContainerLog {
    type Result = Result<()>;
}

/// Resource usage of containers (CRI ContainerStats, ListContainerStats):
/// one ID, or those a filter matches (running ones only when listing).
#[derive(Debug, Clone, Default)]
pub struct ContainerStats {
    pub id: Option<String>,
    pub filter: ListContainers,
}

impl Message for ContainerStats {
    type Result = Result<Vec<ContainerUsage>>;
}

#[derive(Debug, Clone)]
pub struct ContainerUsage {
    pub record: super::store::ContainerRecord,
    pub cgroup: super::stats::CgroupStats,
    /// The writable layer: bytes and inodes, and where it is.
    pub writable_bytes: u64,
    pub writable_inodes: u64,
    pub writable_path: String,
}

/// Resource usage of pods (CRI PodSandboxStats, ListPodSandboxStats): the
/// pause container's cgroup plus every container's.
#[derive(Debug, Clone, Default)]
pub struct PodStats {
    pub id: Option<String>,
    pub filter: crate::sandbox::messages::ListPodSandbox,
}

impl Message for PodStats {
    type Result = Result<Vec<PodUsage>>;
}

#[derive(Debug, Clone)]
pub struct PodUsage {
    pub sandbox: crate::sandbox::store::SandboxRecord,
    pub total: super::stats::CgroupStats,
    pub containers: Vec<ContainerUsage>,
    /// The pod's network interfaces (none on the node's network).
    pub network: Vec<super::stats::InterfaceUsage>,
}

/// CheckpointContainer: the running container's processes (CRIU) and its
/// root filesystem's changes, written as an archive at `location`; the
/// container runs on. `timeout` in seconds, 0 for none.
#[derive(Debug, Clone)]
pub struct CheckpointContainer {
    pub id: String,
    pub location: String,
    pub timeout: i64,
}

impl Message for CheckpointContainer {
    type Result = Result<()>;
}
