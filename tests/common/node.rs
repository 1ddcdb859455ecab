//! A node for end-to-end tests of pods and containers: a registry serving
//! a busybox image built from busybox-static, and a berthd (not started:
//! tests may add to its configuration first) with a CNI network of its own
//! (bridge, subnet, host-local store; the subnet masqueraded by berthd),
//! so that tests run side by side. The bridge goes when the node is
//! dropped, and berthd's masquerade chain with its daemon.

use crate::image::{Compression, ImageBuilder, LayerBuilder};
use crate::registry::Registry;
use crate::Daemon;
use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

pub struct Node {
    pub d: Daemon,
    /// The busybox image's reference in the registry.
    pub image: String,
    pub registry: Registry,
    pub bridge: String,
    /// Its pod subnet, masqueraded by berthd on the way out.
    pub subnet: String,
    /// The node's own cgroup parent, so that fsck sees only its pods.
    pub cgroup_parent: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        // After the daemon's processes are gone (Daemon's drop runs after
        // this one, so end them first): the node's cgroups, deepest first.
        crate::reap(self.d.dir.path());
        remove_cgroups(&self.cgroup_parent);
    }
}

/// Removes the cgroup `parent` and everything below it, in every
/// hierarchy (cgroup v1 and v2): whatever still runs in them is killed,
/// and a cgroup whose last process is still exiting is tried again, for
/// up to 3 s.
pub fn remove_cgroups(parent: &str) {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let mut dirs = vec![std::path::Path::new("/sys/fs/cgroup").join(rel)];
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        dirs.push(h.path().join(rel));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let mut left = false;
        for dir in dirs.iter().filter(|d| d.is_dir()) {
            let mut all = vec![dir.clone()];
            let mut i = 0;
            while i < all.len() {
                for e in std::fs::read_dir(&all[i]).into_iter().flatten().flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        all.push(e.path());
                    }
                }
                i += 1;
            }
            for d in all.iter().rev() {
                for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                {
                    // SAFETY: kill(2) of a process left in a test's cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                left |= std::fs::remove_dir(d).is_err();
            }
        }
        if !left || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A bridge name and a /24 no other test of this run uses.
fn network_slot(tag: &str) -> (String, String) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let pid = std::process::id();
    let bridge = format!("{tag}{}x{k}", pid % 10_000);
    let subnet = format!("10.{}.{}.0/24", 160 + pid % 40, (pid / 40 % 50) * 5 + k % 5);
    (bridge, subnet)
}

impl Node {
    /// A node whose berthd configuration has `extra` (TOML) appended and
    /// whose CNI network is bridge (`bridge_tag` names it) + loopback.
    pub fn new(bridge_tag: &str, extra: &str) -> Node {
        let registry = Registry::start();
        let img = ImageBuilder::new()
            .layer(LayerBuilder::new().busybox().build(Compression::Gzip))
            .env("PATH", "/bin")
            .cmd(&["sh"])
            .build();
        registry.push_image("busybox", Some("node"), &img);
        let (bridge, subnet) = network_slot(bridge_tag);
        let cgroup_parent = format!("/berth-e2e-{bridge}");
        let d = Daemon::configure(&format!(
            "{extra}\n[sandbox]\ncgroup_parent = \"{cgroup_parent}\"\n[registries.\"{}\"]\ninsecure = true\n",
            registry.host()
        ));
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "node",
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true,
                 "ipam": {"type": "host-local", "dataDir": d.dir.path().join("ipam"),
                          "ranges": [[{"subnet": subnet}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "loopback"}
            ]
        });
        std::fs::write(d.cni_dir().join("10-node.conflist"), conf.to_string()).expect("conflist");
        d.masquerade(&[&subnet]);
        Node {
            image: registry.image_ref("busybox", "node"),
            d,
            registry,
            bridge,
            subnet,
            cgroup_parent,
        }
    }

    /// A node as [`Node::new`] makes it, with its berthd running and the
    /// busybox image pulled.
    pub async fn running(bridge_tag: &str, extra: &str) -> Node {
        let mut n = Node::new(bridge_tag, extra);
        n.d.spawn();
        n.pull().await;
        n
    }

    /// Where pods' logs go.
    pub fn logs(&self) -> PathBuf {
        self.d.dir.path().join("logs")
    }

    /// Pulls the busybox image.
    pub async fn pull(&self) {
        self.d
            .images()
            .await
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: self.image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("PullImage");
    }

    /// The consistency check: (exit success, its report).
    pub fn fsck(&self) -> (bool, String) {
        let out = self.d.berthctl(&["fsck"]);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Asserts that fsck finds nothing leaked or missing. A removal's
    /// last steps finish just after the call returns (a shim exits after
    /// it answered), and berthd's sweeps (every 5 to 10 s) remove what
    /// work cut short by an actor's restart left: what is still there
    /// after 15 s is a leak.
    pub fn assert_consistent(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let (ok, report) = self.fsck();
            if ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "fsck found problems:\n{report}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// A 32-hex-digit pod UID derived from `name`, shaped as kubelet's are.
fn pod_uid(name: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(name.as_bytes())[..16])
}

/// The namespaces kubelet asks for a pod: its own network and IPC, a PID
/// namespace per container, the node's user namespace.
fn kubelet_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        target_id: String::new(),
        userns_options: Some(UserNamespace {
            mode: NamespaceMode::Node as i32,
            ..Default::default()
        }),
    }
}

/// A pod as kubelet 1.36 sends it for a BestEffort pod (read off kubelet's
/// real requests): its labels and annotations, DNS, the RuntimeDefault
/// seccomp profile, CPU shares and period. The cgroup parent is left to
/// the node's configuration, so that each test's pods stay apart.
pub fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    let uid = pod_uid(name);
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.clone(),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        dns_config: Some(DnsConfig {
            servers: vec!["10.255.255.53".into()],
            ..Default::default()
        }),
        labels: [
            ("io.kubernetes.pod.name", name),
            ("io.kubernetes.pod.namespace", "e2e"),
            ("io.kubernetes.pod.uid", uid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        annotations: [
            ("kubernetes.io/config.source", "api"),
            (
                "kubernetes.io/config.seen",
                "2026-11-26T10:12:29.271133358Z",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                seccomp: Some(SecurityProfile {
                    profile_type: security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            overhead: Some(LinuxContainerResources::default()),
            resources: Some(LinuxContainerResources {
                cpu_period: 100_000,
                cpu_shares: 2,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What kubelet sends for a pod with `shareProcessNamespace: true`: one PID
/// namespace for the pod (kubelet's default is one per container).
pub fn share_process_namespace(pod: &mut PodSandboxConfig) {
    let sc = pod.linux.get_or_insert_with(Default::default);
    pid_of_the_pod(
        &mut sc
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options,
    );
}

/// A container of a pod that shares its process namespace.
pub fn in_pod_pid_namespace(c: &mut ContainerConfig) {
    let sc = c.linux.get_or_insert_with(Default::default);
    pid_of_the_pod(
        &mut sc
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options,
    );
}

fn pid_of_the_pod(ns: &mut Option<NamespaceOption>) {
    ns.get_or_insert_with(kubelet_namespaces).pid = NamespaceMode::Pod as i32;
}

/// The kernel interfaces kubelet asks a container not to see or change.
pub const KUBELET_MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
pub const KUBELET_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A container as kubelet 1.36 sends it for a BestEffort pod: its labels
/// and annotations, CPU shares and period, oom_score_adj 1000, a hugepage
/// limit of 0 for each page size (kubelet sends them whether or not the
/// node has the hugetlb controller), masked and read-only paths, the pod's
/// namespaces and no seccomp profile of its own.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            user_specified_image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: [("io.kubernetes.container.name".to_string(), name.to_string())].into(),
        annotations: [
            ("io.kubernetes.container.hash", "46eed796"),
            ("io.kubernetes.container.restartCount", "0"),
            (
                "io.kubernetes.container.terminationMessagePath",
                "/dev/termination-log",
            ),
            ("io.kubernetes.container.terminationMessagePolicy", "File"),
            ("io.kubernetes.pod.terminationGracePeriod", "30"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_period: 100_000,
                cpu_shares: 2,
                oom_score_adj: 1000,
                hugepage_limits: ["2MB", "1GB"]
                    .into_iter()
                    .map(|size| HugepageLimit {
                        page_size: size.into(),
                        limit: 0,
                    })
                    .collect(),
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                masked_paths: KUBELET_MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
                readonly_paths: KUBELET_READONLY_PATHS
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
                seccomp: Some(SecurityProfile {
                    profile_type: security_profile::ProfileType::Unconfined as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

pub async fn run_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    config: PodSandboxConfig,
) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

pub async fn create_container(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    config: ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().container_id)
}

pub async fn start_container(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<(), tonic::Status> {
    rt.start_container(StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .map(|_| ())
}

pub async fn container_status(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<ContainerStatus, tonic::Status> {
    rt.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .map(|r| r.into_inner().status.unwrap_or_default())
}

pub async fn pod_status(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<PodSandboxStatus, tonic::Status> {
    rt.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .map(|r| r.into_inner().status.unwrap_or_default())
}

/// StopPodSandbox then RemovePodSandbox.
/// Every pod berthd lists.
pub async fn list_pods(rt: &mut RuntimeServiceClient<Channel>) -> Vec<PodSandbox> {
    rt.list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

pub async fn remove_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
) -> Result<(), tonic::Status> {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .map(|_| ())
}

/// The pid of a running container's process as the CRI reports it
/// (verbose status `info.pid`), or 0.
pub async fn remove_container(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<(), tonic::Status> {
    rt.remove_container(RemoveContainerRequest {
        container_id: id.to_string(),
    })
    .await
    .map(|_| ())
}

pub async fn container_pid(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> u32 {
    let r = rt
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await;
    let Ok(r) = r else { return 0 };
    r.into_inner()
        .info
        .get("info")
        .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
        .and_then(|v| v.get("pid").and_then(|p| p.as_u64()))
        .unwrap_or(0) as u32
}

/// What `sh -c SCRIPT` (ExecSync) prints, trimmed, and its exit code.
pub async fn sh(rt: &mut RuntimeServiceClient<Channel>, id: &str, script: &str) -> (String, i32) {
    let out = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 10,
        })
        .await
        .expect("exec")
        .into_inner();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (text, out.exit_code)
}
