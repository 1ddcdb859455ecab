//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats (and their Stream forms): each container's cgroup
//! and writable layer, and each pod's cgroup with its containers inside,
//! read off the actor.

use super::actor::Containers;
use super::messages::{ContainerStats, ContainerUsage, PodStats, PodUsage};
use super::stats;
use super::store::{ContainerRecord, ContainerState};
use crate::kernel::Reply;
use crate::sandbox::messages::PodSandboxStatus;
use crate::Error;

impl Containers {
    pub(super) fn container_stats(
        &mut self,
        msg: ContainerStats,
    ) -> Reply<Self, Vec<ContainerUsage>> {
        let records = match &msg.id {
            Some(id) => match self.resolve(id).and_then(|f| self.records.get(&f).cloned()) {
                Some(r) => vec![r],
                None => {
                    return Reply::Now(Err(Error::NotFound(format!("container {id:?} not found"))))
                }
            },
            None => {
                let mut f = msg.filter.clone();
                f.state = Some(ContainerState::Running);
                self.list(&f)
            }
        };
        let dir = self.deps.rootfs_dir.clone();
        Reply::off(async move {
            tokio::task::spawn_blocking(move || {
                records.into_iter().map(|r| usage(&dir, r)).collect()
            })
            .await
            .map_err(|e| Error::Internal(format!("stats task: {e}")))
        })
    }

    pub(super) fn pod_stats(&mut self, msg: PodStats) -> Reply<Self, Vec<PodUsage>> {
        let sandbox = self.deps.sandbox.clone();
        let containers: Vec<ContainerRecord> = self
            .records
            .iter()
            .filter(|r| r.state == ContainerState::Running)
            .cloned()
            .collect();
        let dir = self.deps.rootfs_dir.clone();
        Reply::off(async move {
            let pods = match msg.id {
                Some(id) => vec![sandbox.call(PodSandboxStatus { id }).await?],
                None => {
                    let mut f = msg.filter;
                    f.ready = Some(true);
                    sandbox.call(f).await?
                }
            };
            tokio::task::spawn_blocking(move || {
                pods.into_iter()
                    .map(|pod| {
                        let mut total = stats::read(&pod.cgroups_path).unwrap_or_default();
                        let mine: Vec<ContainerUsage> = containers
                            .iter()
                            .filter(|c| c.sandbox_id == pod.id)
                            .map(|c| usage(&dir, c.clone()))
                            .collect();
                        for c in &mine {
                            stats::add(&mut total, &c.cgroup);
                        }
                        // Pressure and swap room are the pod's own
                        // cgroup's, when kubelet gave it one.
                        let own = &pod.config.cgroup_parent;
                        let own_stats = (!own.is_empty()).then(|| stats::read(own).ok()).flatten();
                        total.pressure = own_stats.as_ref().and_then(|s| s.pressure.clone());
                        total.swap_available_bytes = own_stats.and_then(|s| s.swap_available_bytes);
                        let own_network = pod.config.security.namespaces.network
                            != crate::sandbox::messages::NamespaceMode::Node;
                        let network = if own_network {
                            stats::pod_network(pod.pid)
                        } else {
                            Vec::new()
                        };
                        PodUsage {
                            sandbox: pod,
                            total,
                            containers: mine,
                            network,
                        }
                    })
                    .collect()
            })
            .await
            .map_err(|e| Error::Internal(format!("stats task: {e}")))
        })
    }
}

/// A container's usage now: its cgroup (zero when it has none any more) and
/// its writable layer. Blocking.
fn usage(rootfs_dir: &std::path::Path, record: ContainerRecord) -> ContainerUsage {
    let cgroup = if record.cgroups_path.is_empty() {
        stats::CgroupStats::default()
    } else {
        stats::read(&record.cgroups_path).unwrap_or_default()
    };
    let upper = rootfs_dir.join(&record.id).join("upper");
    let (bytes, inodes) = stats::dir_usage(&upper);
    ContainerUsage {
        record,
        cgroup,
        writable_bytes: bytes,
        writable_inodes: inodes,
        writable_path: upper.display().to_string(),
    }
}
