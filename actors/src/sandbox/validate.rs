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
