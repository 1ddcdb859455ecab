//! The consistency check (`berthctl fsck`): the journal against the
//! machine. Anything on the machine that no record owns is *leaked*;
//! anything a record names that the machine has not got is *missing*.
//! It only looks; recovery (at start-up) is what repairs.
//!
//! What is compared:
//! - shim processes and bundles against shim records; a shim record
//!   against its pod or container;
//! - the runtime's containers (its `--root`) against shim records;
//! - mounts under berth's directories (root filesystems, namespace pins,
//!   pods' /dev/shm) against rootfs records, allocations and pods;
//! - pinned namespaces against allocations, and ready pods' namespaces;
//! - host-local IP reservations of the networks berth used against
//!   allocations: a reservation for a pod this berthd has or released
//!   lately must have one; one for a pod it never had belongs to another
//!   runtime sharing the IPAM store and is left out;
//! - cgroups under the pods' parents against pods and containers, and
//!   running ones' cgroups against the machine.

use crate::config::Config;
use berth_actors::container::messages::ListContainers;
use berth_actors::container::store::ContainerState;
use berth_actors::image::recover::ListRootfs;
use berth_actors::network::recover::{ListAllocations, ListReleased};
use berth_actors::node::Node;
use berth_actors::sandbox::messages::ListPodSandbox;
use berth_actors::sandbox::store::SandboxState;
use berth_actors::shim::health::{shim_processes, ListShims};
use berth_actors::Result;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: &'static str,
    pub object: String,
    pub problem: &'static str,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Fsck {
    pub findings: Vec<Finding>,
    pub checked: u64,
    /// IP reservations for pods this berthd never had (another runtime's).
    pub foreign_ips: u64,
}

impl Fsck {
    fn leaked(&mut self, kind: &'static str, object: impl Into<String>, detail: impl Into<String>) {
        self.findings.push(Finding {
            kind,
            object: object.into(),
            problem: "leaked",
            detail: detail.into(),
        });
    }

    fn missing(
        &mut self,
        kind: &'static str,
        object: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.findings.push(Finding {
            kind,
            object: object.into(),
            problem: "missing",
            detail: detail.into(),
        });
    }
}

/// What the journal says, as gathered from the actors.
struct Journal {
    pods: Vec<berth_actors::sandbox::store::SandboxRecord>,
    containers: Vec<berth_actors::container::store::ContainerRecord>,
    shims: Vec<berth_actors::shim::health::ShimHealth>,
    allocations: Vec<berth_actors::network::store::NetworkAllocation>,
    released: Vec<berth_actors::network::store::ReleasedAllocation>,
    rootfs: Vec<berth_actors::image::store::RootfsRecord>,
}

pub async fn run(node: &Node, config: &Config) -> Result<Fsck> {
    let journal = Journal {
        pods: node.sandbox.call(ListPodSandbox::default()).await?,
        containers: node.container.call(ListContainers::default()).await?,
        shims: node.shim.call(ListShims).await?,
        allocations: node.network.call(ListAllocations).await?,
        released: node.network.call(ListReleased).await?,
        rootfs: node.image.call(ListRootfs).await?,
    };
    let config = config.clone();
    let f = tokio::task::spawn_blocking(move || check(&journal, &config))
        .await
        .map_err(|e| berth_actors::Error::Internal(format!("fsck task: {e}")))?;
    if f.foreign_ips > 0 {
        tracing::info!(
            reservations = f.foreign_ips,
            "fsck: IPs reserved for pods this berthd never had (another runtime sharing the IPAM store) left out"
        );
    }
    Ok(f)
}

fn check(j: &Journal, config: &Config) -> Fsck {
    let mut f = Fsck::default();
    let pods: BTreeSet<&str> = j.pods.iter().map(|p| p.id.as_str()).collect();
    let containers: BTreeSet<&str> = j.containers.iter().map(|c| c.id.as_str()).collect();
    let shims: BTreeSet<&str> = j.shims.iter().map(|s| s.container_id.as_str()).collect();
    let allocations: BTreeSet<&str> = j
        .allocations
        .iter()
        .map(|a| a.sandbox_id.as_str())
        .collect();
    let rootfs: BTreeSet<&str> = j.rootfs.iter().map(|r| r.container_id.as_str()).collect();

    // Shims.
    let bundles = config.state.join("shims");
    for (pid, id) in shim_processes(&bundles) {
        f.checked += 1;
        if !shims.contains(id.as_str()) {
            f.leaked("shim", &id, format!("berth-shim pid {pid} has no record"));
        }
    }
    for s in &j.shims {
        f.checked += 1;
        let id = s.container_id.as_str();
        if !pods.contains(id) && !containers.contains(id) {
            f.leaked("record", id, "shim record of no pod or container");
        }
        if s.pid != 0 && !s.alive && !s.exited {
            f.missing(
                "shim",
                id,
                format!("pid {} is gone and no exit is recorded", s.pid),
            );
        }
    }
    for id in dir_names(&bundles) {
        f.checked += 1;
        if !shims.contains(id.as_str()) {
            f.leaked(
                "bundle",
                bundles.join(&id).display().to_string(),
                "no shim record",
            );
        }
    }

    // The runtime's containers.
    for (name, r) in &config.runtimes {
        let mut root = r.root.clone().unwrap_or_else(|| config.state.join(name));
        if r.r#type == crate::config::HandlerType::V2 {
            // A v2 shim keeps the runtime's state per namespace.
            root = root.join(berth_actors::shim::v2::NAMESPACE);
        }
        for id in dir_names(&root) {
            f.checked += 1;
            if !shims.contains(id.as_str()) {
                f.leaked(
                    "runtime",
                    &id,
                    format!("{name} still holds it ({})", root.display()),
                );
            }
        }
    }

    // Mounts under berth's directories.
    let rootfs_dir = config.state.join("rootfs");
    let netns_dir = config.state.join("netns");
    let userns_dir = config.state.join("userns");
    let pods_dir = config.state.join("sandboxes");
    for m in berth_actors::mounts::mount_points() {
        let owner = |dir: &Path| -> Option<String> {
            m.strip_prefix(dir)
                .ok()
                .and_then(|rest| rest.components().next())
                .map(|c| c.as_os_str().to_string_lossy().to_string())
        };
        let (kind, known) = if let Some(id) = owner(&rootfs_dir) {
            ("mount", rootfs.contains(id.as_str()))
        } else if let Some(id) = owner(&netns_dir) {
            ("netns", allocations.contains(id.as_str()))
        } else if let Some(id) = owner(&userns_dir) {
            ("userns", allocations.contains(id.as_str()))
        } else if let Some(id) = owner(&pods_dir) {
            ("mount", pods.contains(id.as_str()))
        } else if (m.starts_with(&config.state) && m != config.state)
            || (m.starts_with(&config.root) && m != config.root)
        {
            // The directories themselves may be mount points (a disk of
            // their own); what is mounted below them is berth's.
            ("mount", false)
        } else {
            continue;
        };
        f.checked += 1;
        if !known {
            f.leaked(kind, m.display().to_string(), "mounted, owned by no record");
        }
    }
    for (kind, dir) in [("netns", &netns_dir), ("userns", &userns_dir)] {
        for id in dir_names(dir) {
            if !allocations.contains(id.as_str()) {
                f.leaked(kind, dir.join(&id).display().to_string(), "no allocation");
            }
        }
    }
    for p in &j.pods {
        f.checked += 1;
        if p.state == SandboxState::Ready
            && !p.netns_path.is_empty()
            && !berth_actors::network::netns::is_pinned(Path::new(&p.netns_path))
        {
            f.missing("netns", &p.netns_path, format!("pod {} is ready", p.id));
        }
    }
    for r in &j.rootfs {
        f.checked += 1;
        if !containers.contains(r.owner()) {
            let what = if r.is_volume() {
                "image volume of no container"
            } else {
                "rootfs of no container"
            };
            f.leaked("record", &r.container_id, what);
        }
    }

    // IPs.
    check_ips(&mut f, j, config);

    // Cgroups.
    check_cgroups(&mut f, j, config);
    f
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A container or pod ID as berth makes them.
fn berth_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// host-local keeps one file per reserved IP, holding the container ID,
/// under `<dataDir>/<network name>/`: each network berth used (in an
/// allocation, or configured now) is looked at.
fn check_ips(f: &mut Fsck, j: &Journal, config: &Config) {
    let mut lists: Vec<serde_json::Value> = j.allocations.iter().map(|a| a.list.clone()).collect();
    if let Ok(current) = berth_actors::network::cni::NetworkList::first_in(&config.cni.conf_dir) {
        lists.push(current.to_json());
    }
    let mut dirs = BTreeSet::new();
    for list in &lists {
        let Some(name) = list.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        for plugin in list
            .get("plugins")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
        {
            let Some(ipam) = plugin.get("ipam") else {
                continue;
            };
            if ipam.get("type").and_then(|t| t.as_str()) != Some("host-local") {
                continue;
            }
            let data = ipam
                .get("dataDir")
                .and_then(|d| d.as_str())
                .unwrap_or("/var/lib/cni/networks");
            dirs.insert(Path::new(data).join(name));
        }
    }
    let holders: BTreeSet<&str> = j
        .allocations
        .iter()
        .map(|a| a.sandbox_id.as_str())
        .collect();
    // Pods this berthd has or had: only their reservations are its own.
    let known: BTreeSet<&str> = j
        .pods
        .iter()
        .map(|p| p.id.as_str())
        .chain(j.released.iter().map(|r| r.sandbox_id.as_str()))
        .chain(holders.iter().copied())
        .collect();
    for dir in dirs {
        for ip in dir_names(&dir) {
            if ip.starts_with("last_reserved_ip") || ip == "lock" {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(dir.join(&ip)) else {
                continue;
            };
            let owner = text.lines().next().unwrap_or_default().trim();
            if !berth_id(owner) {
                continue;
            }
            if !known.contains(owner) {
                f.foreign_ips += 1;
                continue;
            }
            f.checked += 1;
            if !holders.contains(owner) {
                f.leaked(
                    "ip",
                    &ip,
                    format!(
                        "reserved in {} for {owner}, which has no allocation",
                        dir.display()
                    ),
                );
            }
        }
    }
}

/// The directory of `cgroups_path` in one hierarchy (the memory one on
/// cgroup v1).
fn cgroup_dir(cgroups_path: &str) -> PathBuf {
    let base = if berth_actors::host::cgroup_unified() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    };
    base.join(cgroups_path.trim_start_matches('/'))
}

fn check_cgroups(f: &mut Fsck, j: &Journal, config: &Config) {
    let mut parents = BTreeSet::new();
    parents.insert(
        config
            .sandbox
            .cgroup_parent
            .trim_end_matches('/')
            .to_string(),
    );
    let mut owners = BTreeSet::new();
    let mut expected = Vec::new();
    for p in &j.pods {
        owners.insert(p.id.clone());
        if let Some((parent, _)) = p.cgroups_path.rsplit_once('/') {
            parents.insert(parent.to_string());
        }
        if p.state == SandboxState::Ready {
            expected.push((p.id.clone(), p.cgroups_path.clone()));
        }
    }
    for c in &j.containers {
        owners.insert(c.id.clone());
        if c.state == ContainerState::Running {
            expected.push((c.id.clone(), c.cgroups_path.clone()));
        }
    }
    for parent in parents.iter().filter(|p| !p.is_empty()) {
        for name in dir_names(&cgroup_dir(parent)) {
            if !berth_id(&name) {
                continue;
            }
            f.checked += 1;
            if !owners.contains(&name) {
                f.leaked("cgroup", format!("{parent}/{name}"), "no pod or container");
            }
        }
    }
    for (id, path) in expected {
        f.checked += 1;
        if !path.is_empty() && !cgroup_dir(&path).is_dir() {
            f.missing("cgroup", path, format!("{id} is running"));
        }
    }
}
