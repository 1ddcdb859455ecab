//! Conversions between CRI messages and actor messages and replies. The
//! handlers call these and nothing else of the CRI's shapes.

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

pub fn credentials(auth: Option<cri::AuthConfig>) -> Option<Credentials> {
    auth.map(|a| Credentials {
        username: a.username,
        password: a.password,
        auth: a.auth,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    })
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
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            _ => "tcp",
        };
        let port = |v: i32, what: &str| {
            u16::try_from(v)
                .map_err(|_| Error::InvalidArgument(format!("port mapping: {what} {v}")))
        };
        // A mapping without a host port publishes nothing (kubelet sends
        // container ports this way too).
        if p.host_port == 0 {
            continue;
        }
        ports.push(PortMap {
            host_port: port(p.host_port, "host port")?,
            container_port: port(p.container_port, "container port")?,
            protocol: protocol.into(),
            host_ip: p.host_ip.clone(),
        });
    }
    let linux = c.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let ns = sc.namespace_options.unwrap_or_default();
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
        },
    })
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

pub fn sandbox_filter(f: Option<cri::PodSandboxFilter>) -> pod::ListPodSandbox {
    let f = f.unwrap_or_default();
    pod::ListPodSandbox {
        id: Some(f.id).filter(|i| !i.is_empty()),
        ready: f
            .state
            .map(|s| s.state == cri::PodSandboxState::SandboxReady as i32),
        labels: f.label_selector.into_iter().collect(),
    }
}
