//! Checks of a pod's configuration before anything is made: bad input is a
//! clear InvalidArgument and changes nothing.

use super::messages::{DnsConfig, NamespaceMode, PodConfig};
use crate::checked::{self, shown, NAME_MAX};
use crate::{Error, Result};
use std::path::Path;

/// Labels and annotations of a pod: twice what the Kubernetes API allows
/// a pod's annotations (256 KiB), which kubelet copies here.
pub const METADATA_MAP_MAX: usize = 512 * 1024;

/// Host ports one pod may publish: each is a set of NAT rules the port
/// mapping plugin writes one by one.
pub const HOST_PORTS_MAX: usize = 256;

/// Search domains in resolv.conf, as the Kubernetes API bounds them.
const DNS_SEARCHES_MAX: usize = 32;

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
        checked::required(&format!("pod sandbox metadata: {field}"), value, NAME_MAX)?;
        if value.contains('/') {
            return Err(invalid(format!(
                "pod sandbox metadata: {field} {} holds '/'",
                shown(value)
            )));
        }
    }
    checked::string_map("pod labels", &config.labels, METADATA_MAP_MAX)?;
    checked::string_map("pod annotations", &config.annotations, METADATA_MAP_MAX)?;
    hostname(&config.hostname)?;
    if let Some(dns) = &config.dns {
        dns_config(dns)?;
    }
    let ns = &config.security.namespaces;
    for (name, value) in &config.sysctls {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !valid_name || name.contains("..") {
            return Err(invalid(format!(
                "sysctl {} is not a valid name",
                shown(name)
            )));
        }
        match namespaced(name) {
            None => {
                return Err(invalid(format!(
                    "sysctl {} is not namespaced: a pod may not set it",
                    shown(name)
                )))
            }
            Some("network") if ns.network == NamespaceMode::Node => {
                return Err(invalid(format!(
                    "sysctl {} would change the host's network namespace",
                    shown(name)
                )))
            }
            Some("ipc") if ns.ipc == NamespaceMode::Node => {
                return Err(invalid(format!(
                    "sysctl {} would change the host's IPC namespace",
                    shown(name)
                )))
            }
            _ => {}
        }
        let file = std::path::Path::new("/proc/sys").join(name.replace('.', "/"));
        if !file.exists() {
            return Err(invalid(format!(
                "sysctl {} does not exist on this kernel",
                shown(name)
            )));
        }
        checked::line(&format!("sysctl {} value", shown(name)), value, 4096)?;
    }
    cgroup_parent(&config.cgroup_parent)?;
    if config.port_mappings.len() > HOST_PORTS_MAX {
        return Err(invalid(format!(
            "port mappings: {} host ports; a pod may publish at most {HOST_PORTS_MAX}",
            config.port_mappings.len()
        )));
    }
    for p in &config.port_mappings {
        if p.container_port == 0 {
            return Err(invalid("port mapping: container port 0".into()));
        }
        if !["tcp", "udp", "sctp"].contains(&p.protocol.as_str()) {
            return Err(invalid(format!(
                "port mapping: protocol {}",
                shown(&p.protocol)
            )));
        }
        if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!(
                "port mapping: host IP {} is not an IP address",
                shown(&p.host_ip)
            )));
        }
    }
    log_directory(&config.log_directory)
}

/// Where kernel interfaces live: a pod's logs never go there.
const KERNEL_FILESYSTEMS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// The pod's log directory (empty: no logs): absolute, no `..`, not in a
/// kernel filesystem, and a directory if it exists.
pub fn log_directory(dir: &str) -> Result<()> {
    if dir.is_empty() {
        return Ok(());
    }
    checked::absolute("log directory", dir)?;
    let path = Path::new(dir);
    if KERNEL_FILESYSTEMS.iter().any(|k| path.starts_with(k)) {
        return Err(invalid(format!(
            "log directory {} is inside a kernel filesystem",
            shown(dir)
        )));
    }
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(invalid(format!(
            "log directory {} exists and is not a directory",
            shown(dir)
        ))),
        _ => Ok(()),
    }
}

/// resolv.conf is written line by line from these: servers are IP
/// addresses; searches and options single words.
fn dns_config(dns: &DnsConfig) -> Result<()> {
    for s in &dns.servers {
        if s.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!(
                "dns config: server {} is not an IP address",
                shown(s)
            )));
        }
    }
    if dns.searches.len() > DNS_SEARCHES_MAX {
        return Err(invalid(format!(
            "dns config: {} search domains; the most is {DNS_SEARCHES_MAX}",
            dns.searches.len()
        )));
    }
    for (field, values) in [("search", &dns.searches), ("option", &dns.options)] {
        for v in values {
            checked::required(&format!("dns config: {field}"), v, NAME_MAX)?;
            if v.contains(char::is_whitespace) {
                return Err(invalid(format!(
                    "dns config: {field} {} holds white space",
                    shown(v)
                )));
            }
        }
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
            "hostname {} is {} bytes long; the most is {HOSTNAME_MAX}",
            shown(name),
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
            "hostname {} is not a valid hostname (dot-separated labels of letters, digits and inner hyphens)",
            shown(name)
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
