//! Conversions between CRI messages and actor messages and replies. The
//! handlers call these and nothing else of the CRI's shapes.

use crate::rates::CpuRates;
use berth_actors::image::messages::{FsUsage, ImageInfo};
use berth_actors::image::registry::Credentials;
use berth_actors::Error;
use berth_protocol::cri;
use std::collections::HashMap;

/// The image an `ImageSpec` names; an absent or empty one is bad input.
pub fn image_name(spec: Option<&cri::ImageSpec>) -> Result<String, Error> {
    spec.map(|s| s.image.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::InvalidArgument("image spec: no image named".into()))
}

/// The most any one credential may hold: a token from an identity
/// provider is a few KiB; a header a registry would take is far below.
const CREDENTIAL_MAX: usize = 64 * 1024;

pub fn credentials(auth: Option<cri::AuthConfig>) -> Result<Option<Credentials>, Error> {
    let Some(a) = auth else { return Ok(None) };
    for (field, value) in [
        ("auth: username", &a.username),
        ("auth: password", &a.password),
        ("auth: auth", &a.auth),
        ("auth: identity_token", &a.identity_token),
        ("auth: registry_token", &a.registry_token),
        ("auth: server_address", &a.server_address),
    ] {
        // The value is a secret: only its size is said.
        if value.len() > CREDENTIAL_MAX || value.contains(['\0', '\r', '\n']) {
            return Err(Error::InvalidArgument(format!(
                "{field}: {} bytes, or a NUL or line break; at most {CREDENTIAL_MAX} bytes of one line",
                value.len()
            )));
        }
    }
    Ok(Some(Credentials {
        username: a.username,
        password: a.password,
        auth: a.auth,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    }))
}

pub fn image(info: &ImageInfo) -> cri::Image {
    let r = &info.record;
    cri::Image {
        id: r.id.clone(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid: info.uid.map(|value| cri::Int64Value { value }),
        username: info.username.clone(),
        spec: Some(cri::ImageSpec {
            image: r.id.clone(),
            ..Default::default()
        }),
        pinned: r.pinned,
    }
}

/// The verbose `info` of ImageStatus: the image config and its layers.
pub fn image_info(info: &ImageInfo) -> HashMap<String, String> {
    let Some(config) = &info.config else {
        return HashMap::new();
    };
    let value = serde_json::json!({
        "id": info.record.id,
        "chainIDs": info.record.chain_ids,
        "imageSpec": config,
    });
    HashMap::from([("info".to_string(), value.to_string())])
}

pub fn fs_usage(u: &FsUsage) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp: u.timestamp_unix_nanos,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: u.mountpoint.clone(),
        }),
        used_bytes: Some(cri::UInt64Value {
            value: u.used_bytes,
        }),
        inodes_used: Some(cri::UInt64Value {
            value: u.inodes_used,
        }),
    }
}

use berth_actors::network::cni::PortMapping as PortMap;
use berth_actors::sandbox::messages as pod;
use berth_actors::sandbox::store::{SandboxRecord, SandboxState};

fn namespace_mode(m: i32) -> pod::NamespaceMode {
    match cri::NamespaceMode::try_from(m) {
        Ok(cri::NamespaceMode::Container) => pod::NamespaceMode::Container,
        Ok(cri::NamespaceMode::Node) => pod::NamespaceMode::Node,
        Ok(cri::NamespaceMode::Target) => pod::NamespaceMode::Target,
        _ => pod::NamespaceMode::Pod,
    }
}

fn cri_namespace_mode(m: pod::NamespaceMode) -> i32 {
    (match m {
        pod::NamespaceMode::Pod => cri::NamespaceMode::Pod,
        pod::NamespaceMode::Container => cri::NamespaceMode::Container,
        pod::NamespaceMode::Node => cri::NamespaceMode::Node,
        pod::NamespaceMode::Target => cri::NamespaceMode::Target,
    }) as i32
}

fn seccomp(profile: Option<&cri::SecurityProfile>) -> String {
    match profile {
        None => String::new(),
        Some(p) => match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::Unconfined) => "unconfined".into(),
            Ok(cri::security_profile::ProfileType::Localhost) => {
                format!("localhost/{}", p.localhost_ref)
            }
            _ => "runtime/default".into(),
        },
    }
}

/// The pod configuration from RunPodSandbox; missing metadata is bad input.
pub fn pod_config(config: Option<cri::PodSandboxConfig>) -> Result<pod::PodConfig, Error> {
    let c = config.ok_or_else(|| Error::InvalidArgument("pod sandbox config is missing".into()))?;
    let m = c
        .metadata
        .ok_or_else(|| Error::InvalidArgument("pod sandbox metadata is missing".into()))?;
    let attempt = m.attempt;
    let mut ports = Vec::new();
    for p in &c.port_mappings {
        let protocol = match cri::Protocol::try_from(p.protocol) {
            Ok(cri::Protocol::Tcp) => "tcp",
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "port mapping: protocol {} is not TCP, UDP or SCTP",
                    p.protocol
                )))
            }
        };
        let port = |v: i32, what: &str| {
            u16::try_from(v).map_err(|_| {
                Error::InvalidArgument(format!("port mapping: {what} {v} is not a port"))
            })
        };
        let host_port = port(p.host_port, "host port")?;
        let container_port = port(p.container_port, "container port")?;
        // A mapping without a host port publishes nothing (kubelet sends
        // container ports this way too).
        if host_port == 0 {
            continue;
        }
        ports.push(PortMap {
            host_port,
            container_port,
            protocol: protocol.into(),
            host_ip: p.host_ip.clone(),
        });
    }
    let linux = c.linux.unwrap_or_default();
    // Pod-level resources are kept with the pod (kubelet sizes its
    // cgroup); checked like a container's.
    let pod_resources = match (linux.resources.clone(), linux.overhead.clone()) {
        (Some(r), overhead) => Some(pod_resources("config.linux.", Some(r), overhead)?),
        (None, Some(o)) => {
            overhead_ok("config.linux.overhead", &resources(o))?;
            None
        }
        (None, None) => None,
    };
    let sc = linux.security_context.unwrap_or_default();
    let ns = sc.namespace_options.unwrap_or_default();
    let user_namespace = user_namespace(&ns)?;
    Ok(pod::PodConfig {
        metadata: pod::PodMetadata {
            name: m.name,
            uid: m.uid,
            namespace: m.namespace,
            attempt,
        },
        hostname: c.hostname,
        log_directory: c.log_directory,
        dns: c.dns_config.map(|d| pod::DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        port_mappings: ports,
        labels: c.labels.into_iter().collect(),
        annotations: c.annotations.into_iter().collect(),
        cgroup_parent: linux.cgroup_parent,
        sysctls: linux.sysctls.into_iter().collect(),
        security: pod::PodSecurity {
            namespaces: pod::NamespaceOptions {
                network: namespace_mode(ns.network),
                pid: namespace_mode(ns.pid),
                ipc: namespace_mode(ns.ipc),
            },
            run_as_user: sc.run_as_user.map(|v| v.value),
            run_as_group: sc.run_as_group.map(|v| v.value),
            readonly_rootfs: sc.readonly_rootfs,
            supplemental_groups: sc.supplemental_groups,
            privileged: sc.privileged,
            seccomp: seccomp(sc.seccomp.as_ref()),
            user_namespace,
        },
        resources: pod_resources,
    })
}

/// The pod's user namespace from `userns_options`: NODE (or none) is the
/// node's; POD takes exactly one mapping of users and one of groups, each
/// from container ID 0; CONTAINER and TARGET are not modes a pod has.
fn user_namespace(ns: &cri::NamespaceOption) -> Result<Option<berth_actors::userns::IdMap>, Error> {
    const FIELD: &str = "config.linux.security_context.namespace_options.userns_options";
    let Some(u) = &ns.userns_options else {
        return Ok(None);
    };
    let mode = cri::NamespaceMode::try_from(u.mode).map_err(|_| {
        Error::InvalidArgument(format!("{FIELD}.mode {} is not a namespace mode", u.mode))
    })?;
    match mode {
        cri::NamespaceMode::Node => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{FIELD}: mode NODE takes no uids or gids mappings"
                )));
            }
            return Ok(None);
        }
        cri::NamespaceMode::Container | cri::NamespaceMode::Target => {
            return Err(Error::InvalidArgument(format!(
                "{FIELD}.mode {}: a pod's user namespace is the node's (NODE) or its own (POD)",
                mode.as_str_name()
            )))
        }
        cri::NamespaceMode::Pod => {}
    }
    let one = |which: &str, maps: &[cri::IdMapping]| -> Result<(u32, u32), Error> {
        let [m] = maps else {
            return Err(Error::InvalidArgument(format!(
                "{FIELD}.{which}: mode POD takes exactly one mapping, not {}",
                maps.len()
            )));
        };
        if m.container_id != 0 {
            return Err(Error::InvalidArgument(format!(
                "{FIELD}.{which}: the mapping must start at container ID 0, not {}",
                m.container_id
            )));
        }
        if m.length == 0 || m.host_id.checked_add(m.length).is_none() {
            return Err(Error::InvalidArgument(format!(
                "{FIELD}.{which}: host ID {} with length {} is not a range of IDs",
                m.host_id, m.length
            )));
        }
        Ok((m.host_id, m.length))
    };
    let (host_uid, uid_length) = one("uids", &u.uids)?;
    let (host_gid, gid_length) = one("gids", &u.gids)?;
    if uid_length != gid_length {
        return Err(Error::InvalidArgument(format!(
            "{FIELD}: the uids mapping has length {uid_length}, the gids mapping {gid_length}; berth maps both alike"
        )));
    }
    let host = |m: i32| cri::NamespaceMode::try_from(m) == Ok(cri::NamespaceMode::Node);
    for (what, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
        if host(mode) {
            return Err(Error::InvalidArgument(format!(
                "{FIELD}: a pod in its own user namespace cannot use the node's {what} namespace"
            )));
        }
    }
    Ok(Some(berth_actors::userns::IdMap {
        host_uid,
        host_gid,
        length: uid_length,
    }))
}

fn sandbox_state(s: SandboxState) -> i32 {
    (match s {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        _ => cri::PodSandboxState::SandboxNotready,
    }) as i32
}

fn metadata(r: &SandboxRecord) -> cri::PodSandboxMetadata {
    let m = &r.config.metadata;
    cri::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

/// The pod's user namespace as CRI shows it: its own (POD) with its
/// mapping, or the node's.
fn userns_status(map: Option<berth_actors::userns::IdMap>) -> cri::UserNamespace {
    match map {
        None => cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        },
        Some(m) => {
            let one = |host_id| {
                vec![cri::IdMapping {
                    host_id,
                    container_id: 0,
                    length: m.length,
                }]
            };
            cri::UserNamespace {
                mode: cri::NamespaceMode::Pod as i32,
                uids: one(m.host_uid),
                gids: one(m.host_gid),
            }
        }
    }
}

pub fn sandbox_status(r: &SandboxRecord) -> cri::PodSandboxStatus {
    let ns = &r.config.security.namespaces;
    let mut ips = r.ips.iter();
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: Some(metadata(r)),
        state: sandbox_state(r.state),
        created_at: r.created_unix_nanos,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: ips.next().cloned().unwrap_or_default(),
            additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: cri_namespace_mode(ns.network),
                    pid: cri_namespace_mode(ns.pid),
                    ipc: cri_namespace_mode(ns.ipc),
                    userns_options: Some(userns_status(r.config.security.user_namespace)),
                    ..Default::default()
                }),
            }),
        }),
        labels: r.config.labels.clone().into_iter().collect(),
        annotations: r.config.annotations.clone().into_iter().collect(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

/// The verbose `info` of PodSandboxStatus.
pub fn sandbox_info(r: &SandboxRecord) -> HashMap<String, String> {
    let info = serde_json::json!({
        "pid": r.pid,
        "netns": r.netns_path,
        "cgroupsPath": r.cgroups_path,
        "config": r.config,
        "runtimeHandler": r.runtime_handler,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

pub fn sandbox(r: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: r.id.clone(),
        metadata: Some(metadata(r)),
        state: sandbox_state(r.state),
        created_at: r.created_unix_nanos,
        labels: r.config.labels.clone().into_iter().collect(),
        annotations: r.config.annotations.clone().into_iter().collect(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

pub fn sandbox_filter(f: Option<cri::PodSandboxFilter>) -> Result<pod::ListPodSandbox, Error> {
    let f = f.unwrap_or_default();
    let ready = match f.state.map(|s| cri::PodSandboxState::try_from(s.state)) {
        None => None,
        Some(Ok(state)) => Some(state == cri::PodSandboxState::SandboxReady),
        Some(Err(e)) => {
            return Err(Error::InvalidArgument(format!(
                "pod sandbox filter: state: {e}"
            )))
        }
    };
    Ok(pod::ListPodSandbox {
        id: Some(f.id).filter(|i| !i.is_empty()),
        ready,
        labels: f.label_selector.into_iter().collect(),
        with_creating: false,
    })
}

use berth_actors::container::messages as ctr;
use berth_actors::container::store::{ContainerRecord, ContainerState as CState};

/// A CRI Signal as a signal number (0 for the runtime's default).
fn signal(s: i32) -> i32 {
    cri::Signal::try_from(s)
        .ok()
        .filter(|s| *s != cri::Signal::RuntimeDefault)
        .and_then(|s| s.as_str_name().parse::<nix::sys::signal::Signal>().ok())
        .map(|s| s as i32)
        .unwrap_or(0)
}

pub fn resources(r: cri::LinuxContainerResources) -> ctr::Resources {
    ctr::Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
        hugepage_limits: r
            .hugepage_limits
            .into_iter()
            .map(|h| (h.page_size, h.limit))
            .collect(),
        unified: r.unified.into_iter().collect(),
    }
}

pub fn container_config(c: Option<cri::ContainerConfig>) -> Result<ctr::ContainerConfig, Error> {
    let c = c.ok_or_else(|| Error::InvalidArgument("container config is missing".into()))?;
    let m = c
        .metadata
        .ok_or_else(|| Error::InvalidArgument("container metadata is missing".into()))?;
    let linux = c.linux.unwrap_or_default();
    let r = linux.resources.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let caps = sc.capabilities.unwrap_or_default();
    let ns = sc.namespace_options.unwrap_or_default();
    Ok(ctr::ContainerConfig {
        name: m.name,
        attempt: m.attempt,
        image: c.image.map(|i| i.image).unwrap_or_default(),
        command: c.command,
        args: c.args,
        working_dir: c.working_dir,
        envs: c.envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        mounts: c
            .mounts
            .into_iter()
            .map(|m| ctr::MountConfig {
                container_path: m.container_path,
                host_path: m.host_path,
                readonly: m.readonly,
                recursive_read_only: m.recursive_read_only,
                image: m.image.map(|i| i.image).unwrap_or_default(),
                image_sub_path: m.image_sub_path,
                propagation: match cri::MountPropagation::try_from(m.propagation) {
                    Ok(cri::MountPropagation::PropagationHostToContainer) => {
                        ctr::Propagation::HostToContainer
                    }
                    Ok(cri::MountPropagation::PropagationBidirectional) => {
                        ctr::Propagation::Bidirectional
                    }
                    _ => ctr::Propagation::Private,
                },
            })
            .collect(),
        devices: c
            .devices
            .into_iter()
            .map(|d| ctr::DeviceConfig {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        labels: c.labels.into_iter().collect(),
        annotations: c.annotations.into_iter().collect(),
        log_path: c.log_path,
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        resources: resources(r),
        security: ctr::ContainerSecurity {
            capabilities_add: caps.add_capabilities,
            capabilities_drop: caps.drop_capabilities,
            privileged: sc.privileged,
            pid_namespace: namespace_mode(ns.pid),
            target_id: ns.target_id,
            run_as_user: sc.run_as_user.map(|v| v.value),
            run_as_group: sc.run_as_group.map(|v| v.value),
            run_as_username: sc.run_as_username,
            readonly_rootfs: sc.readonly_rootfs,
            supplemental_groups: sc.supplemental_groups,
            supplemental_groups_policy: if sc.supplemental_groups_policy
                == cri::SupplementalGroupsPolicy::Strict as i32
            {
                ctr::SupplementalGroupsPolicy::Strict
            } else {
                ctr::SupplementalGroupsPolicy::Merge
            },
            no_new_privs: sc.no_new_privs,
            masked_paths: (!sc.masked_paths.is_empty()).then_some(sc.masked_paths),
            readonly_paths: (!sc.readonly_paths.is_empty()).then_some(sc.readonly_paths),
            seccomp: seccomp(sc.seccomp.as_ref()),
        },
        stop_signal: signal(c.stop_signal),
    })
}

fn container_state(s: CState) -> i32 {
    (match s {
        CState::Creating | CState::Created => cri::ContainerState::ContainerCreated,
        CState::Running => cri::ContainerState::ContainerRunning,
        CState::Exited => cri::ContainerState::ContainerExited,
    }) as i32
}

/// The state a filter asks for: None for CONTAINER_UNKNOWN, which berth
/// never reports (nothing matches it).
pub fn container_state_filter(s: i32) -> Result<Option<CState>, Error> {
    match cri::ContainerState::try_from(s) {
        Ok(cri::ContainerState::ContainerCreated) => Ok(Some(CState::Created)),
        Ok(cri::ContainerState::ContainerRunning) => Ok(Some(CState::Running)),
        Ok(cri::ContainerState::ContainerExited) => Ok(Some(CState::Exited)),
        Ok(cri::ContainerState::ContainerUnknown) => Ok(None),
        Err(e) => Err(Error::InvalidArgument(format!(
            "container filter: state: {e}"
        ))),
    }
}

fn image_spec(r: &ContainerRecord) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: r.config.image.clone(),
        ..Default::default()
    })
}

pub fn container(r: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.sandbox_id.clone(),
        metadata: Some(cri::ContainerMetadata {
            name: r.config.name.clone(),
            attempt: r.config.attempt,
        }),
        image: image_spec(r),
        image_ref: r.image_id.clone(),
        state: container_state(r.state),
        created_at: r.created_unix_nanos,
        labels: r.config.labels.clone().into_iter().collect(),
        annotations: r.config.annotations.clone().into_iter().collect(),
        image_id: r.image_id.clone(),
    }
}

pub fn container_status(r: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: Some(cri::ContainerMetadata {
            name: r.config.name.clone(),
            attempt: r.config.attempt,
        }),
        state: container_state(r.state),
        created_at: r.created_unix_nanos,
        started_at: r.started_unix_nanos,
        finished_at: r.finished_unix_nanos,
        exit_code: r.exit_code,
        image: image_spec(r),
        image_ref: r.image_id.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: r.config.labels.clone().into_iter().collect(),
        annotations: r.config.annotations.clone().into_iter().collect(),
        mounts: r
            .config
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: match m.propagation {
                    ctr::Propagation::Private => cri::MountPropagation::PropagationPrivate,
                    ctr::Propagation::HostToContainer => {
                        cri::MountPropagation::PropagationHostToContainer
                    }
                    ctr::Propagation::Bidirectional => {
                        cri::MountPropagation::PropagationBidirectional
                    }
                } as i32,
                recursive_read_only: m.recursive_read_only,
                image: (!m.image.is_empty()).then(|| cri::ImageSpec {
                    image: m.image.clone(),
                    ..Default::default()
                }),
                image_sub_path: m.image_sub_path.clone(),
                ..Default::default()
            })
            .collect(),
        log_path: r.log_path.clone(),
        resources: Some(cri::ContainerResources {
            linux: Some(cri::LinuxContainerResources {
                cpu_period: r.config.resources.cpu_period,
                cpu_quota: r.config.resources.cpu_quota,
                cpu_shares: r.config.resources.cpu_shares,
                memory_limit_in_bytes: r.config.resources.memory_limit_in_bytes,
                oom_score_adj: r.config.resources.oom_score_adj,
                cpuset_cpus: r.config.resources.cpuset_cpus.clone(),
                cpuset_mems: r.config.resources.cpuset_mems.clone(),
                memory_swap_limit_in_bytes: r.config.resources.memory_swap_limit_in_bytes,
                unified: r.config.resources.unified.clone().into_iter().collect(),
                ..Default::default()
            }),
            windows: None,
        }),
        image_id: r.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: r.user.0 as i64,
                gid: r.user.1 as i64,
                supplemental_groups: r.user.2.iter().map(|g| *g as i64).collect(),
            }),
        }),
        stop_signal: 0,
    }
}

/// The list to ask for; None when nothing can match.
pub fn container_filter(
    f: Option<cri::ContainerFilter>,
) -> Result<Option<ctr::ListContainers>, Error> {
    let f = f.unwrap_or_default();
    let state = match f.state {
        None => None,
        Some(s) => match container_state_filter(s.state)? {
            Some(state) => Some(state),
            None => return Ok(None),
        },
    };
    Ok(Some(ctr::ListContainers {
        id: Some(f.id).filter(|i| !i.is_empty()),
        sandbox_id: Some(f.pod_sandbox_id).filter(|i| !i.is_empty()),
        state,
        labels: f.label_selector.into_iter().collect(),
        with_creating: false,
    }))
}

use berth_actors::container::messages::{ContainerUsage, PodUsage};
use berth_actors::container::stats::{CgroupStats, Pressure, Psi, PsiLine};

fn u64v(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

fn psi(p: Option<&Psi>) -> Option<cri::PsiStats> {
    let data = |l: &PsiLine| cri::PsiData {
        total: l.total_micros,
        avg10: f64::from(l.avg10) / 100.0,
        avg60: f64::from(l.avg60) / 100.0,
        avg300: f64::from(l.avg300) / 100.0,
    };
    p.map(|p| cri::PsiStats {
        full: p.full.as_ref().map(data),
        some: Some(data(&p.some)),
    })
}

fn pressure_of(s: &CgroupStats, which: fn(&Pressure) -> Option<&Psi>) -> Option<cri::PsiStats> {
    psi(s.pressure.as_ref().and_then(which))
}

fn cpu(key: &str, s: &CgroupStats, rates: &CpuRates) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: s.timestamp_unix_nanos,
        usage_core_nano_seconds: u64v(s.cpu_usage_core_nanos),
        usage_nano_cores: u64v(rates.rate(key, s.timestamp_unix_nanos, s.cpu_usage_core_nanos)),
        psi: pressure_of(s, |p| p.cpu.as_ref()),
    }
}

/// IO: the cgroup's IO pressure (the only reading the CRI carries).
fn io(s: &CgroupStats) -> Option<cri::IoUsage> {
    let psi = pressure_of(s, |p| p.io.as_ref())?;
    Some(cri::IoUsage {
        timestamp: s.timestamp_unix_nanos,
        psi: Some(psi),
    })
}

fn swap(s: &CgroupStats) -> Option<cri::SwapUsage> {
    s.swap_usage_bytes.map(|used| cri::SwapUsage {
        timestamp: s.timestamp_unix_nanos,
        swap_available_bytes: u64v(s.swap_available_bytes),
        swap_usage_bytes: u64v(Some(used)),
    })
}

fn memory(s: &CgroupStats) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: s.timestamp_unix_nanos,
        working_set_bytes: u64v(s.memory_working_set_bytes),
        usage_bytes: u64v(s.memory_usage_bytes),
        rss_bytes: u64v(s.memory_rss_bytes),
        page_faults: u64v(s.page_faults),
        major_page_faults: u64v(s.major_page_faults),
        psi: pressure_of(s, |p| p.memory.as_ref()),
        ..Default::default()
    }
}

pub fn container_stats(u: &ContainerUsage, rates: &CpuRates) -> cri::ContainerStats {
    let r = &u.record;
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: r.config.name.clone(),
                attempt: r.config.attempt,
            }),
            labels: r.config.labels.clone().into_iter().collect(),
            annotations: r.config.annotations.clone().into_iter().collect(),
        }),
        cpu: Some(cpu(&r.id, &u.cgroup, rates)),
        memory: Some(memory(&u.cgroup)),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: u.cgroup.timestamp_unix_nanos,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: u.writable_path.clone(),
            }),
            used_bytes: u64v(Some(u.writable_bytes)),
            inodes_used: u64v(Some(u.writable_inodes)),
        }),
        swap: swap(&u.cgroup),
        io: io(&u.cgroup),
    }
}

/// A pod's network interfaces, `eth0` (or the first) as the default.
fn network(p: &PodUsage) -> Option<cri::NetworkUsage> {
    let stats = |i: &berth_actors::container::stats::InterfaceUsage| cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u64v(Some(i.rx_bytes)),
        rx_errors: u64v(Some(i.rx_errors)),
        tx_bytes: u64v(Some(i.tx_bytes)),
        tx_errors: u64v(Some(i.tx_errors)),
    };
    let first = p
        .network
        .iter()
        .position(|i| i.name == "eth0")
        .or((!p.network.is_empty()).then_some(0))?;
    Some(cri::NetworkUsage {
        timestamp: p.total.timestamp_unix_nanos,
        default_interface: Some(stats(&p.network[first])),
        interfaces: p
            .network
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != first)
            .map(|(_, n)| stats(n))
            .collect(),
    })
}

pub fn pod_stats(p: &PodUsage, rates: &CpuRates) -> cri::PodSandboxStats {
    let r = &p.sandbox;
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: r.id.clone(),
            metadata: Some(metadata(r)),
            labels: r.config.labels.clone().into_iter().collect(),
            annotations: r.config.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu(&r.id, &p.total, rates)),
            memory: Some(memory(&p.total)),
            process: Some(cri::ProcessUsage {
                timestamp: p.total.timestamp_unix_nanos,
                process_count: u64v(p.total.pids),
            }),
            containers: p
                .containers
                .iter()
                .map(|c| container_stats(c, rates))
                .collect(),
            network: network(p),
            io: io(&p.total),
        }),
        windows: None,
    }
}

pub fn container_stats_filter(f: Option<cri::ContainerStatsFilter>) -> ctr::ContainerStats {
    let f = f.unwrap_or_default();
    ctr::ContainerStats {
        id: None,
        filter: ctr::ListContainers {
            id: Some(f.id).filter(|i| !i.is_empty()),
            sandbox_id: Some(f.pod_sandbox_id).filter(|i| !i.is_empty()),
            state: None,
            labels: f.label_selector.into_iter().collect(),
            with_creating: false,
        },
    }
}

pub fn pod_stats_filter(f: Option<cri::PodSandboxStatsFilter>) -> ctr::PodStats {
    let f = f.unwrap_or_default();
    ctr::PodStats {
        id: None,
        filter: pod::ListPodSandbox {
            id: Some(f.id).filter(|i| !i.is_empty()),
            ready: None,
            labels: f.label_selector.into_iter().collect(),
            with_creating: false,
        },
    }
}

/// The verbose `info` of ContainerStatus: the process, pid, cgroup and
/// root filesystem berth runs it with.
pub fn container_info(
    r: &ContainerRecord,
    spec: Option<serde_json::Value>,
) -> HashMap<String, String> {
    let info = serde_json::json!({
        "pid": r.pid,
        "sandboxID": r.sandbox_id,
        "cgroupsPath": r.cgroups_path,
        "imageRef": r.image_id,
        "runtimeSpec": spec,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

/// A CreateContainer request as berthd logs it at debug: environment
/// values are often secrets, so only their names are kept.
pub fn without_env_values(req: &cri::CreateContainerRequest) -> cri::CreateContainerRequest {
    let mut req = req.clone();
    if let Some(config) = req.config.as_mut() {
        for kv in &mut config.envs {
            kv.value = "<redacted>".into();
        }
    }
    req
}

/// The node's pod CIDRs in an UpdateRuntimeConfig (`pod_cidr`: one, or
/// one per address family separated by a comma); none clears them.
pub fn pod_cidrs(c: Option<cri::RuntimeConfig>) -> Result<Vec<String>, Error> {
    let text = c
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    let field = "runtime_config.network_config.pod_cidr";
    let cidrs: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if cidrs.len() > 2 {
        return Err(Error::InvalidArgument(format!(
            "{field}: at most one CIDR per address family, not {}",
            cidrs.len()
        )));
    }
    let mut families = Vec::new();
    for cidr in &cidrs {
        let (addr, _) = berth_actors::network::masquerade::parse_cidr(cidr)
            .map_err(|e| Error::InvalidArgument(format!("{field}: {e}")))?;
        if families.contains(&addr.is_ipv4()) {
            return Err(Error::InvalidArgument(format!(
                "{field}: {text:?} has two CIDRs of one address family"
            )));
        }
        families.push(addr.is_ipv4());
    }
    Ok(cidrs)
}

/// An overhead adds to limits: no field of it may be negative.
fn overhead_ok(field: &str, o: &ctr::Resources) -> Result<(), Error> {
    for (name, v) in [
        ("cpu_period", o.cpu_period),
        ("cpu_quota", o.cpu_quota),
        ("cpu_shares", o.cpu_shares),
        ("memory_limit_in_bytes", o.memory_limit_in_bytes),
    ] {
        if v < 0 {
            return Err(Error::InvalidArgument(format!(
                "{field}.{name}: {v} is negative"
            )));
        }
    }
    Ok(())
}

/// A pod's limits from its pod-level resources (checked like a
/// container's) and overhead, the overhead added as kubelet sizes the
/// pod's cgroup.
/// `prefix` leads the fields' names in messages.
pub fn pod_resources(
    prefix: &str,
    r: Option<cri::LinuxContainerResources>,
    overhead: Option<cri::LinuxContainerResources>,
) -> Result<ctr::Resources, Error> {
    let r = r.ok_or_else(|| Error::InvalidArgument(format!("{prefix}resources: missing")))?;
    let r = resources(r);
    berth_actors::container::validate::resources(&format!("{prefix}resources"), &r)?;
    let o = overhead.map(resources);
    if let Some(o) = &o {
        overhead_ok(&format!("{prefix}overhead"), o)?;
    }
    Ok(berth_actors::sandbox::resize::with_overhead(&r, o.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_requests_keep_env_names_and_hide_their_values() {
        let req = cri::CreateContainerRequest {
            config: Some(cri::ContainerConfig {
                envs: vec![cri::KeyValue {
                    key: "DB_PASSWORD".into(),
                    value: "hunter2".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let logged = format!("{:?}", without_env_values(&req));
        assert!(logged.contains("DB_PASSWORD"), "{logged}");
        assert!(!logged.contains("hunter2"), "{logged}");
        assert_eq!(req.config.expect("config").envs[0].value, "hunter2");
    }

    #[test]
    fn pod_cidrs_one_per_family() {
        let cidrs = |text: &str| {
            pod_cidrs(Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig {
                    pod_cidr: text.into(),
                }),
            }))
        };
        assert_eq!(cidrs(""), Ok(vec![]));
        assert_eq!(pod_cidrs(None), Ok(vec![]));
        assert_eq!(
            cidrs("10.244.1.0/24, fd00:1::/64"),
            Ok(vec!["10.244.1.0/24".to_string(), "fd00:1::/64".to_string()])
        );
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0",
            "10.1.0.0/24,10.2.0.0/24",
            "a,b,c",
        ] {
            assert!(
                matches!(cidrs(bad), Err(Error::InvalidArgument(m)) if m.contains("pod_cidr")),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_image_volume_keeps_its_image_and_sub_path() {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            mounts: vec![
                cri::Mount {
                    container_path: "/data".into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                },
                cri::Mount {
                    container_path: "/model".into(),
                    image: Some(cri::ImageSpec {
                        image: "registry.example/model:1".into(),
                        ..Default::default()
                    }),
                    image_sub_path: "weights".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let c = container_config(Some(config)).expect("converted");
        let got: Vec<(&str, &str, &str)> = c
            .mounts
            .iter()
            .map(|m| {
                (
                    m.host_path.as_str(),
                    m.image.as_str(),
                    m.image_sub_path.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/tmp", "", ""),
                ("", "registry.example/model:1", "weights")
            ]
        );
    }
}
