//! Checks of a pod's configuration before anything is made: bad input is a
//! clear InvalidArgument and changes nothing.

use super::messages::{NamespaceMode, PodConfig};
use crate::{Error, Result};

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// Sysctls that only affect the pod's own namespaces, and so are safe to
/// set per pod (the kernel's namespaced ones, as kubelet classifies them).
fn namespaced(name: &str) -> Option<&'static str> {
    if name.starts_with("net.") {
        return Some("network");
    }
    if name.starts_with("fs.mqueue.")
        || name == "kernel.sem"
        || name.starts_with("kernel.shm")
        || name.starts_with("kernel.msg")
    {
        return Some("ipc");
    }
    None
}

pub fn pod(config: &PodConfig) -> Result<()> {
    let m = &config.metadata;
    for (field, value) in [
        ("name", &m.name),
        ("namespace", &m.namespace),
        ("uid", &m.uid),
    ] {
        if value.is_empty() {
            return Err(invalid(format!("pod sandbox metadata: {field} is empty")));
        }
        if value.contains(['/', '\0']) {
            return Err(invalid(format!(
                "pod sandbox metadata: {field} {value:?} holds '/'"
            )));
        }
    }
    hostname(&config.hostname)?;
    let ns = &config.security.namespaces;
    for (name, value) in &config.sysctls {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !valid_name || name.contains("..") {
            return Err(invalid(format!("sysctl {name:?} is not a valid name")));
        }
        match namespaced(name) {
            None => {
                return Err(invalid(format!(
                    "sysctl {name:?} is not namespaced: a pod may not set it"
                )))
            }
            Some("network") if ns.network == NamespaceMode::Node => {
                return Err(invalid(format!(
                    "sysctl {name:?} would change the host's network namespace"
                )))
            }
            Some("ipc") if ns.ipc == NamespaceMode::Node => {
                return Err(invalid(format!(
                    "sysctl {name:?} would change the host's IPC namespace"
                )))
            }
            _ => {}
        }
        let file = std::path::Path::new("/proc/sys").join(name.replace('.', "/"));
        if !file.exists() {
            return Err(invalid(format!(
                "sysctl {name:?} does not exist on this kernel"
            )));
        }
        if value.contains('\n') {
            return Err(invalid(format!("sysctl {name:?}: value holds a newline")));
        }
    }
    cgroup_parent(&config.cgroup_parent)?;
    for p in &config.port_mappings {
        if p.container_port == 0 {
            return Err(invalid("port mapping: container port 0".into()));
        }
        if !["tcp", "udp", "sctp"].contains(&p.protocol.as_str()) {
            return Err(invalid(format!("port mapping: protocol {:?}", p.protocol)));
        }
    }
    if !config.log_directory.is_empty() && !config.log_directory.starts_with('/') {
        return Err(invalid(format!(
            "log directory {:?} is not an absolute path",
            config.log_directory
        )));
    }
    Ok(())
}

/// The longest hostname the kernel takes (`HOST_NAME_MAX`).
const HOSTNAME_MAX: usize = 64;

/// A hostname kubelet may give (empty means the node's): at most 64 bytes
/// of dot-separated labels of letters, digits and inner hyphens, as RFC
/// 1123 has it. The kernel would take more, but runc and every resolver
/// would not; refusing here names the field instead of failing in runc.
pub fn hostname(name: &str) -> Result<()> {
    if name.is_empty() {
        return Ok(());
    }
    if name.len() > HOSTNAME_MAX {
        return Err(invalid(format!(
            "hostname {name:?} is {} bytes long; the most is {HOSTNAME_MAX}",
            name.len()
        )));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return Err(invalid(format!(
            "hostname {name:?} is not a valid hostname (dot-separated labels of letters, digits and inner hyphens)"
        )));
    }
    Ok(())
}

/// A cgroup parent must be a path inside the cgroup hierarchy: absolute,
/// with no `..` and no empty or dot components.
pub fn cgroup_parent(parent: &str) -> Result<()> {
    if parent.is_empty() {
        return Ok(());
    }
    let ok = parent.starts_with('/')
        && parent
            .split('/')
            .skip(1)
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if !ok {
        return Err(invalid(format!(
            "cgroup parent {parent:?} is not a path inside the cgroup hierarchy"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::messages::PodMetadata;

    fn good() -> PodConfig {
        PodConfig {
            metadata: PodMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            },
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_plain_pod_and_namespaced_sysctls() {
        let mut c = good();
        c.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        c.sysctls.insert("kernel.shmmax".into(), "1000000".into());
        c.cgroup_parent = "/kubepods/besteffort/podu1".into();
        c.hostname = "a".repeat(63) + ".example-1.org";
        assert!(pod(&c).is_err(), "77 bytes");
        c.hostname = "web-0.web.default.svc".into();
        pod(&c).expect("valid");
    }

    #[test]
    fn refuses_bad_metadata_sysctls_and_cgroup_parents() {
        let mut c = good();
        c.metadata.name.clear();
        assert!(pod(&c).unwrap_err().to_string().contains("name is empty"));
        for (sysctl, why) in [
            ("kernel.hostname", "not namespaced"),
            ("net.nope.nothing", "does not exist"),
            ("../etc", "not a valid name"),
        ] {
            let mut c = good();
            c.sysctls.insert(sysctl.into(), "1".into());
            let err = pod(&c).unwrap_err().to_string();
            assert!(err.contains(why), "{sysctl}: {err}");
        }
        let mut c = good();
        c.security.namespaces.network = NamespaceMode::Node;
        c.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        assert!(pod(&c).unwrap_err().to_string().contains("host's network"));
        for (name, why) in [
            ("a".repeat(65), "bytes long"),
            ("web server".into(), "not a valid hostname"),
            ("-web".into(), "not a valid hostname"),
            ("web..x".into(), "not a valid hostname"),
            ("wëb".into(), "not a valid hostname"),
            ("web\0".into(), "not a valid hostname"),
        ] {
            let mut c = good();
            c.hostname = name.clone();
            let err = pod(&c).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("hostname"),
                "{name:?}: {err}"
            );
        }
        for parent in ["relative/x", "/a/../b", "/a//b"] {
            let mut c = good();
            c.cgroup_parent = parent.into();
            assert!(
                pod(&c).unwrap_err().to_string().contains("cgroup parent"),
                "{parent}"
            );
        }
    }
}
