//! CNI, as the specification has a runtime drive it: the network list (the
//! first loadable file of the configuration directory, in name order) is
//! run plugin by plugin, each ADD given the previous plugin's result as
//! `prevResult`, each DEL in reverse order with the cached result. Plugins
//! declare capabilities (`portMappings`, `bandwidth`); only those get the
//! matching `runtimeConfig`.

use crate::{Error, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A loaded network list: a `.conflist`, or a single `.conf` as a list of
/// one.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    pub file: PathBuf,
}

impl NetworkList {
    /// Parses one configuration file.
    pub fn load(file: &Path) -> std::result::Result<NetworkList, String> {
        let text = std::fs::read(file).map_err(|e| e.to_string())?;
        let conf: Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
        let name = conf
            .get("name")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .ok_or("no network name")?
            .to_string();
        let cni_version = conf
            .get("cniVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("0.4.0")
            .to_string();
        let plugins = match conf.get("plugins") {
            Some(p) => p.as_array().cloned().ok_or("plugins is not a list")?,
            None => vec![conf.clone()],
        };
        if plugins.is_empty() {
            return Err("no plugin in the network config".into());
        }
        for p in &plugins {
            if p.get("type")
                .and_then(|t| t.as_str())
                .is_none_or(|t| t.is_empty())
            {
                return Err("a plugin without a type".into());
            }
        }
        Ok(NetworkList {
            name,
            cni_version,
            plugins,
            file: file.to_path_buf(),
        })
    }

    /// The first loadable list in `dir`, or why there is none.
    pub fn first_in(dir: &Path) -> std::result::Result<NetworkList, String> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read CNI config directory {}: {e}", dir.display()))?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
            })
            .collect();
        files.sort();
        let mut problems = Vec::new();
        for file in &files {
            match NetworkList::load(file) {
                Ok(list) => return Ok(list),
                Err(e) => problems.push(format!("{}: {e}", file.display())),
            }
        }
        if problems.is_empty() {
            Err(format!("no network config found in {}", dir.display()))
        } else {
            Err(problems.join("; "))
        }
    }

    /// The list as it is journalled, so DEL uses what ADD used even if the
    /// directory changed since.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "cniVersion": self.cni_version,
            "plugins": self.plugins,
            "file": self.file,
        })
    }

    pub fn from_json(v: &Value) -> Option<NetworkList> {
        Some(NetworkList {
            name: v.get("name")?.as_str()?.to_string(),
            cni_version: v.get("cniVersion")?.as_str()?.to_string(),
            plugins: v.get("plugins")?.as_array()?.clone(),
            file: PathBuf::from(v.get("file")?.as_str().unwrap_or_default()),
        })
    }
}

/// A port a pod publishes on the host (the `portMappings` capability).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    pub host_ip: String,
}

/// Traffic shaping (the `bandwidth` capability), in bits per second.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub egress_rate: u64,
}

/// One pod's attachment to the network.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` and friends, passed in `CNI_ARGS`.
    pub args: Vec<(String, String)>,
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<Bandwidth>,
    /// The node's pod CIDRs (the `ipRanges` capability).
    pub ip_ranges: Vec<String>,
}

/// Where plugin binaries are looked up.
#[derive(Debug, Clone)]
pub struct Plugins {
    pub bin_dirs: Vec<PathBuf>,
    /// How long one plugin may run.
    pub timeout: Duration,
}

impl Plugins {
    fn find(&self, kind: &str) -> Result<PathBuf> {
        if kind.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "CNI plugin type {kind:?} is not a name"
            )));
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "CNI plugin {kind:?} not found in {}",
                    self.bin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ))
            })
    }

    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Runs one plugin with `command` and the plugin's config on stdin.
    async fn exec(&self, command: &str, conf: &Value, a: &Attachment) -> Result<Value> {
        let kind = conf
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        let bin = self.find(kind)?;
        let args = a
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let mut child = tokio::process::Command::new(&bin)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", self.cni_path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Internal(format!("run CNI plugin {}: {e}", bin.display())))?;
        let input = serde_json::to_vec(conf).map_err(|e| Error::Internal(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&input)
                .await
                .map_err(|e| Error::Internal(format!("CNI plugin {kind} stdin: {e}")))?;
        }
        let started = std::time::Instant::now();
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                Error::DeadlineExceeded(format!(
                    "CNI plugin {kind} {command} did not finish in {}s",
                    self.timeout.as_secs()
                ))
            })?
            .map_err(|e| Error::Internal(format!("CNI plugin {kind}: {e}")))?;
        tracing::debug!(
            plugin = kind,
            command,
            container = %a.container_id,
            micros = started.elapsed().as_micros() as u64,
            ok = out.status.success(),
            "CNI plugin ran"
        );
        if !out.status.success() {
            // Plugins report errors as JSON on stdout.
            let why = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| {
                    let msg = v.get("msg")?.as_str()?.to_string();
                    Some(match v.get("details").and_then(|d| d.as_str()) {
                        Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                        _ => msg,
                    })
                })
                .unwrap_or_else(|| {
                    let err = String::from_utf8_lossy(&out.stderr);
                    format!("{} {}", out.status, err.trim())
                });
            return Err(Error::FailedPrecondition(format!(
                "CNI plugin {kind} {command} failed: {why}"
            )));
        }
        if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::FailedPrecondition(format!(
                "CNI plugin {kind} {command}: unreadable result: {e}"
            ))
        })
    }

    /// A plugin's stdin: its own config, the list's name and version, the
    /// runtime config for the capabilities it declares, and `prevResult`.
    fn plugin_conf(list: &NetworkList, plugin: &Value, a: &Attachment, prev: &Value) -> Value {
        let mut conf = plugin.clone();
        let Some(obj) = conf.as_object_mut() else {
            return conf;
        };
        obj.insert("name".into(), json!(list.name));
        obj.insert("cniVersion".into(), json!(list.cni_version));
        let caps = plugin.get("capabilities").cloned().unwrap_or(Value::Null);
        let mut runtime = serde_json::Map::new();
        if caps.get("portMappings") == Some(&json!(true)) && !a.port_mappings.is_empty() {
            let ports: Vec<Value> = a
                .port_mappings
                .iter()
                .map(|p| {
                    let mut m = json!({
                        "hostPort": p.host_port,
                        "containerPort": p.container_port,
                        "protocol": p.protocol,
                    });
                    if !p.host_ip.is_empty() {
                        m["hostIP"] = json!(p.host_ip);
                    }
                    m
                })
                .collect();
            runtime.insert("portMappings".into(), json!(ports));
        }
        if let (Some(bw), Some(true)) = (
            &a.bandwidth,
            caps.get("bandwidth").and_then(|b| b.as_bool()),
        ) {
            let mut b = serde_json::Map::new();
            if bw.ingress_rate > 0 {
                b.insert("ingressRate".into(), json!(bw.ingress_rate));
                b.insert("ingressBurst".into(), json!(u32::MAX));
            }
            if bw.egress_rate > 0 {
                b.insert("egressRate".into(), json!(bw.egress_rate));
                b.insert("egressBurst".into(), json!(u32::MAX));
            }
            runtime.insert("bandwidth".into(), Value::Object(b));
        }
        if caps.get("ipRanges") == Some(&json!(true)) && !a.ip_ranges.is_empty() {
            let sets: Vec<Value> = a
                .ip_ranges
                .iter()
                .map(|cidr| json!([{ "subnet": cidr }]))
                .collect();
            runtime.insert("ipRanges".into(), json!(sets));
        }
        if !runtime.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        if !prev.is_null() {
            obj.insert("prevResult".into(), prev.clone());
        }
        conf
    }

    /// ADD through every plugin; answers the last plugin's result.
    pub async fn add(&self, list: &NetworkList, a: &Attachment) -> Result<Value> {
        let mut prev = Value::Null;
        for plugin in &list.plugins {
            let conf = Self::plugin_conf(list, plugin, a, &prev);
            let result = self.exec("ADD", &conf, a).await?;
            if !result.is_null() {
                prev = result;
            }
        }
        Ok(prev)
    }

    /// CHECK through every plugin with the cached result (CNI 0.4 and up).
    pub async fn check(&self, list: &NetworkList, a: &Attachment, cached: &Value) -> Result<()> {
        if list.cni_version.starts_with("0.1")
            || list.cni_version.starts_with("0.2")
            || list.cni_version.starts_with("0.3")
        {
            return Ok(());
        }
        for plugin in &list.plugins {
            let conf = Self::plugin_conf(list, plugin, a, cached);
            self.exec("CHECK", &conf, a).await?;
        }
        Ok(())
    }

    /// DEL through every plugin, last first. Every plugin is asked even if
    /// one fails (so that an IPAM allocation is released); the first
    /// failure is answered.
    pub async fn del(&self, list: &NetworkList, a: &Attachment, cached: &Value) -> Result<()> {
        let mut first_err = None;
        for plugin in list.plugins.iter().rev() {
            let conf = Self::plugin_conf(list, plugin, a, cached);
            if let Err(e) = self.exec("DEL", &conf, a).await {
                tracing::warn!(container = %a.container_id, error = %e, "CNI DEL failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The pod's IPs from a CNI result (0.4 or 1.0), primary first: addresses
/// on interfaces inside the pod's namespace (or with no interface named).
pub fn pod_ips(result: &Value) -> Vec<String> {
    let interfaces = result
        .get("interfaces")
        .and_then(|i| i.as_array())
        .cloned()
        .unwrap_or_default();
    let in_pod = |idx: Option<u64>| match idx {
        None => true,
        Some(i) => interfaces
            .get(i as usize)
            .and_then(|iface| iface.get("sandbox"))
            .and_then(|s| s.as_str())
            .is_some_and(|s| !s.is_empty()),
    };
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for ip in result
        .get("ips")
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
    {
        if !in_pod(ip.get("interface").and_then(|i| i.as_u64())) {
            continue;
        }
        let Some(addr) = ip.get("address").and_then(|a| a.as_str()) else {
            continue;
        };
        // What a plugin prints is checked: only real addresses count.
        let bare = addr.split('/').next().unwrap_or(addr);
        match bare.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => v4.push(bare.to_string()),
            Ok(std::net::IpAddr::V6(_)) => v6.push(bare.to_string()),
            Err(_) => {}
        }
    }
    v4.extend(v6);
    v4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_are_the_sandbox_side_addresses_v4_first() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2},
                {"address": "10.88.0.1/16", "interface": 0}
            ]
        });
        assert_eq!(pod_ips(&result), vec!["10.88.0.5", "fd00::5"]);
        let v040 = json!({"ips": [{"version": "4", "address": "10.1.0.2/24"}]});
        assert_eq!(pod_ips(&v040), vec!["10.1.0.2"]);
        let lies = json!({"ips": [{"address": "999.1.1.1/99"}, {"address": "x"}, {"address": 7}]});
        assert!(pod_ips(&lies).is_empty());
    }

    #[test]
    fn runtime_config_goes_only_to_plugins_that_declare_the_capability() {
        let list = NetworkList {
            name: "pods".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![
                json!({"type": "bridge"}),
                json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            ],
            file: PathBuf::from("/x"),
        };
        let a = Attachment {
            container_id: "c".into(),
            netns: "/n".into(),
            ifname: "eth0".into(),
            args: vec![],
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            bandwidth: None,
            ip_ranges: vec!["10.9.0.0/24".into(), "fd09::/64".into()],
        };
        let prev = json!({"ips": []});
        let bridge = Plugins::plugin_conf(&list, &list.plugins[0], &a, &Value::Null);
        assert!(bridge.get("runtimeConfig").is_none() && bridge.get("prevResult").is_none());
        assert_eq!(bridge["name"], "pods");
        let portmap = Plugins::plugin_conf(&list, &list.plugins[1], &a, &prev);
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(portmap["cniVersion"], "1.0.0");
        // The pod CIDRs go only to a plugin that declares ipRanges.
        assert!(portmap["runtimeConfig"].get("ipRanges").is_none());
        let ranged = json!({"type": "bridge", "capabilities": {"ipRanges": true}});
        let conf = Plugins::plugin_conf(&list, &ranged, &a, &Value::Null);
        assert_eq!(
            conf["runtimeConfig"]["ipRanges"],
            json!([[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd09::/64"}]])
        );
    }

    /// Real plugins from containernetworking-plugins (bin/setup installs
    /// them): a pod gets an IP the host can ping, and DEL releases it.
    #[tokio::test]
    async fn real_plugins_attach_and_release_a_pod() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = dir.path().join("ipam");
        let bridge = format!("bt{}", std::process::id() % 100_000);
        let list = NetworkList {
            name: "unit".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![
                json!({"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                       "ipam": {"type": "host-local", "dataDir": ipam,
                                "ranges": [[{"subnet": "10.231.7.0/24"}]]}}),
                json!({"type": "portmap", "capabilities": {"portMappings": true}}),
                json!({"type": "loopback"}),
            ],
            file: dir.path().join("x.conflist"),
        };
        let pin = dir.path().join("netns/pod");
        super::super::netns::create(&pin).expect("netns");
        let plugins = Plugins {
            bin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            timeout: Duration::from_secs(30),
        };
        let a = Attachment {
            container_id: "unitpod".into(),
            netns: pin.clone(),
            ifname: "eth0".into(),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            port_mappings: vec![],
            bandwidth: None,
            ip_ranges: vec![],
        };
        let result = plugins.add(&list, &a).await.expect("ADD");
        let ips = pod_ips(&result);
        assert_eq!(ips.len(), 1, "{result}");
        assert!(ips[0].starts_with("10.231.7."), "{ips:?}");
        let allocated = ipam.join("unit").join(&ips[0]);
        assert!(allocated.exists(), "host-local recorded the IP");
        plugins.check(&list, &a, &result).await.expect("CHECK");
        let ping = std::process::Command::new("ping")
            .args(["-c1", "-W2", &ips[0]])
            .output()
            .expect("ping (iputils-ping, installed by bin/setup)");
        assert!(ping.status.success(), "the host reaches the pod: {ping:?}");
        plugins.del(&list, &a, &result).await.expect("DEL");
        assert!(!allocated.exists(), "DEL released the IP");
        // DEL again, even with the namespace gone, is fine.
        super::super::netns::remove(&pin).expect("remove netns");
        plugins.del(&list, &a, &result).await.expect("second DEL");
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &bridge])
            .status();
    }
}
