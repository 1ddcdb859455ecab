//! The OCI runtime spec of a pod's pause container: the image's read-only
//! root, `/pause` as the process, new UTS/IPC/PID namespaces (unless the
//! pod uses the host's), the pod's network namespace, its cgroup, its
//! sysctls and its user.

use super::messages::{NamespaceMode, PodConfig};
use crate::{Error, Result};
use oci_spec::runtime::{
    LinuxNamespaceBuilder, LinuxNamespaceType, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use std::path::Path;

/// What kubelet and containerd give the pause container: almost never
/// chosen by the OOM killer.
const PAUSE_OOM_SCORE_ADJ: i32 = -998;

/// The lowest oom_score_adj this process may set: without
/// CAP_SYS_RESOURCE it cannot go below its own (containerd's
/// restrict_oom_score_adj clamps the same way instead of failing).
pub fn clamp_oom_score_adj(wanted: i32) -> i32 {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(-1000);
    wanted.max(own)
}

fn spec_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("pause spec: {e}"))
}

/// The OCI mappings of a pod's user namespace: (users, groups).
pub fn id_mappings(
    map: &crate::userns::IdMap,
) -> Result<(
    Vec<oci_spec::runtime::LinuxIdMapping>,
    Vec<oci_spec::runtime::LinuxIdMapping>,
)> {
    let one = |host: u32| {
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(host)
            .size(map.length)
            .build()
            .map_err(spec_err)
    };
    Ok((vec![one(map.host_uid)?], vec![one(map.host_gid)?]))
}

pub struct PauseSpec<'a> {
    pub config: &'a PodConfig,
    pub rootfs: &'a Path,
    pub hostname: &'a str,
    /// The pod's network namespace; None for a host-network pod.
    pub netns: Option<&'a Path>,
    pub cgroups_path: String,
}

impl PauseSpec<'_> {
    pub fn build(&self) -> Result<Spec> {
        let mut spec = Spec::default();
        let ns = &self.config.security.namespaces;
        spec.set_root(Some(
            RootBuilder::default()
                .path(self.rootfs)
                .readonly(true)
                .build()
                .map_err(spec_err)?,
        ));
        spec.set_hostname(self.netns.map(|_| self.hostname.to_string()));
        let uid = self.config.security.run_as_user.unwrap_or(0);
        let gid = self.config.security.run_as_group.unwrap_or(0);
        let user = UserBuilder::default()
            .uid(
                u32::try_from(uid)
                    .map_err(|_| Error::InvalidArgument(format!("run_as_user {uid}")))?,
            )
            .gid(
                u32::try_from(gid)
                    .map_err(|_| Error::InvalidArgument(format!("run_as_group {gid}")))?,
            )
            .additional_gids(
                self.config
                    .security
                    .supplemental_groups
                    .iter()
                    .filter_map(|g| u32::try_from(*g).ok())
                    .collect::<Vec<_>>(),
            )
            .build()
            .map_err(spec_err)?;
        let default_process = spec.process().clone().unwrap_or_default();
        let process = ProcessBuilder::default()
            .args(vec!["/pause".to_string()])
            .cwd("/")
            .env(vec!["PATH=/".to_string()])
            .user(user)
            .terminal(false)
            .no_new_privileges(true)
            .oom_score_adj(clamp_oom_score_adj(PAUSE_OOM_SCORE_ADJ))
            .capabilities(default_process.capabilities().clone().unwrap_or_default())
            .rlimits(default_process.rlimits().clone().unwrap_or_default())
            .build()
            .map_err(spec_err)?;
        spec.set_process(Some(process));

        let linux = spec.linux_mut().get_or_insert_with(Default::default);
        let mut namespaces = vec![LinuxNamespaceType::Mount];
        if ns.pid != NamespaceMode::Node {
            namespaces.push(LinuxNamespaceType::Pid);
        }
        if ns.ipc != NamespaceMode::Node {
            namespaces.push(LinuxNamespaceType::Ipc);
        }
        let mut list = Vec::new();
        for t in namespaces {
            list.push(
                LinuxNamespaceBuilder::default()
                    .typ(t)
                    .build()
                    .map_err(spec_err)?,
            );
        }
        if let Some(netns) = self.netns {
            list.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(netns)
                    .build()
                    .map_err(spec_err)?,
            );
            list.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Uts)
                    .build()
                    .map_err(spec_err)?,
            );
        }
        if let (Some(map), Some(netns)) = (&self.config.security.user_namespace, self.netns) {
            // The pod's user namespace, made with its network namespace,
            // which it owns.
            let userns = crate::network::netns::userns_pin(netns);
            list.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::User)
                    .path(userns)
                    .build()
                    .map_err(spec_err)?,
            );
            let (uids, gids) = id_mappings(map)?;
            linux.set_uid_mappings(Some(uids));
            linux.set_gid_mappings(Some(gids));
        }
        linux.set_namespaces(Some(list));
        linux.set_cgroups_path(Some(self.cgroups_path.clone().into()));
        if !self.config.sysctls.is_empty() {
            linux.set_sysctl(Some(self.config.sysctls.clone().into_iter().collect()));
        }
        // The pause container needs no device and no resources of its own.
        linux.set_resources(None);
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_score_adj_is_never_below_our_own() {
        let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
            .expect("oom_score_adj")
            .trim()
            .parse()
            .expect("number");
        assert_eq!(clamp_oom_score_adj(-1000), own.max(-1000));
        assert_eq!(clamp_oom_score_adj(900), 900.max(own));
    }

    #[test]
    fn host_network_pods_keep_the_host_network_and_uts() {
        let config = PodConfig::default();
        let spec = PauseSpec {
            config: &config,
            rootfs: Path::new("/r"),
            hostname: "h",
            netns: None,
            cgroups_path: "/berth/x".into(),
        }
        .build()
        .expect("spec");
        let kinds: Vec<_> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(!kinds.contains(&LinuxNamespaceType::Network));
        assert!(!kinds.contains(&LinuxNamespaceType::Uts));
        assert!(kinds.contains(&LinuxNamespaceType::Pid));
        assert_eq!(spec.hostname(), &None);
        let p = spec.process().as_ref().expect("process");
        assert_eq!(
            p.args().as_ref().expect("args"),
            &vec!["/pause".to_string()]
        );
    }
}
