//! berthd's configuration: config.toml, with built-in defaults equal to the
//! repository's `config.toml`. Unknown keys and bad values are start-up
//! errors that name the key, on one line.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub root: PathBuf,
    pub state: PathBuf,
    pub cri: Cri,
    pub admin: Admin,
    pub metrics: Metrics,
    pub log: Log,
    pub cgroup: Cgroup,
    pub cni: Cni,
    pub daemon: Daemon,
    pub image: Image,
    pub sandbox: Sandbox,
    pub shim: Shim,
    pub chaos: Chaos,
    pub stream: Stream,
    /// OCI runtimes by CRI runtime handler; "" means "runc".
    pub runtimes: BTreeMap<String, RuntimeHandler>,
    /// Per registry host (as named in image references, e.g. `docker.io`,
    /// `registry.k8s.io`, `127.0.0.1:5000`).
    pub registries: BTreeMap<String, Registry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Image {
    pub stall_timeout_secs: u64,
    pub max_concurrent_downloads: usize,
    /// Pulls of different images at once; more wait their turn.
    pub max_concurrent_pulls: usize,
    /// A layer may unpack to this many times its compressed size (and
    /// always to 256 MiB); 0: no bound.
    pub max_unpack_ratio: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sandbox {
    pub pause_binary: Option<PathBuf>,
    pub cgroup_parent: String,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            pause_binary: None,
            cgroup_parent: "/berth".into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shim {
    pub binary: Option<PathBuf>,
}

/// How a handler runs its containers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerType {
    /// berth-shim with the OCI runtime `binary`.
    #[default]
    Berth,
    /// A containerd runtime v2 shim (`shim`), driving `binary`.
    V2,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandler {
    #[serde(default)]
    pub r#type: HandlerType,
    /// The runtime v2 shim binary (`type = "v2"` only), e.g.
    /// `containerd-shim-runc-v2`: a name looked up in PATH, or a path.
    #[serde(default)]
    pub shim: Option<PathBuf>,
    #[serde(default = "runc")]
    pub binary: PathBuf,
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Exec'd processes are started by the shim itself where it can (see
    /// berth-shim's `native` module); false sends every exec through the
    /// runtime.
    #[serde(default = "yes")]
    pub native_exec: bool,
    /// A runtime command that runs longer is killed and fails.
    #[serde(default = "runtime_timeout")]
    pub timeout_secs: u64,
}

fn runtime_timeout() -> u64 {
    120
}

fn runc() -> PathBuf {
    "runc".into()
}

fn yes() -> bool {
    true
}

fn default_runtimes() -> BTreeMap<String, RuntimeHandler> {
    BTreeMap::from([
        (
            "runc".to_string(),
            RuntimeHandler {
                r#type: HandlerType::Berth,
                shim: None,
                binary: runc(),
                root: None,
                native_exec: true,
                timeout_secs: runtime_timeout(),
            },
        ),
        (
            "youki".to_string(),
            RuntimeHandler {
                r#type: HandlerType::Berth,
                shim: None,
                binary: "youki".into(),
                root: None,
                native_exec: true,
                timeout_secs: runtime_timeout(),
            },
        ),
        (
            "runc-v2".to_string(),
            RuntimeHandler {
                r#type: HandlerType::V2,
                shim: Some("containerd-shim-runc-v2".into()),
                binary: runc(),
                root: None,
                native_exec: true,
                timeout_secs: runtime_timeout(),
            },
        ),
    ])
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Registry {
    pub mirrors: Vec<String>,
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cri {
    pub socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    pub socket: PathBuf,
}

/// berthd's Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Where `GET /metrics` is served (host:port); none: not served.
    pub address: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    pub level: String,
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cgroup {
    pub driver: CgroupDriver,
    /// Never apply hugepage limits, even where the hugetlb controller
    /// exists (containerd's `disable_hugetlb_controller`).
    pub disable_hugetlb_controller: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub plugin_timeout_secs: u64,
    /// Pod subnets masqueraded by one node-wide chain (CIDRs).
    pub masquerade: Vec<String>,
}

/// Chaos mode: kills random actors on a schedule (each is restarted by its
/// supervisor and rebuilds its state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Chaos {
    pub enabled: bool,
    pub interval_ms: u64,
    /// Actors to pick from; empty means all.
    pub actors: Vec<String>,
    /// "kill" (stopped as after a fatal error) or "panic" (in a handler).
    pub mode: ChaosMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChaosMode {
    Kill,
    Panic,
}

impl Default for Chaos {
    fn default() -> Self {
        Chaos {
            enabled: false,
            interval_ms: 5000,
            actors: Vec::new(),
            mode: ChaosMode::Kill,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Daemon {
    pub shutdown_grace_secs: u64,
    pub start_timeout_secs: u64,
    /// ExecSync calls running at once; more wait (at most their own
    /// timeout, or 10 s) and then fail with RESOURCE_EXHAUSTED.
    pub max_exec_sync: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: "/var/lib/berth".into(),
            state: "/run/berth".into(),
            cri: Cri::default(),
            admin: Admin::default(),
            metrics: Metrics::default(),
            log: Log::default(),
            cgroup: Cgroup::default(),
            cni: Cni::default(),
            daemon: Daemon::default(),
            image: Image::default(),
            sandbox: Sandbox::default(),
            shim: Shim::default(),
            chaos: Chaos::default(),
            stream: Stream::default(),
            runtimes: default_runtimes(),
            registries: BTreeMap::new(),
        }
    }
}

/// The streaming server Exec, Attach and PortForward's URLs lead to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stream {
    /// The address it listens on (and URLs name).
    pub address: std::net::IpAddr,
    /// Its port; 0 takes a free one at start.
    pub port: u16,
    /// Seconds a client has to open its streams.
    pub stream_creation_timeout_secs: u64,
    /// Seconds a session may stay without traffic.
    pub idle_timeout_secs: u64,
    /// HTTPS: the certificate chain (PEM); with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// HTTPS: the certificate's private key (PEM).
    pub tls_key_file: Option<PathBuf>,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port: 0,
            stream_creation_timeout_secs: 30,
            idle_timeout_secs: 4 * 3600,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Default for Cri {
    fn default() -> Self {
        Cri {
            socket: "/run/berth/berth.sock".into(),
        }
    }
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            socket: "/run/berth/admin.sock".into(),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            json: false,
        }
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Cgroup {
            driver: CgroupDriver::Cgroupfs,
            disable_hugetlb_controller: false,
        }
    }
}

impl Default for Cni {
    fn default() -> Self {
        Cni {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            plugin_timeout_secs: 60,
            masquerade: vec!["10.89.0.0/16".into()],
        }
    }
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            shutdown_grace_secs: 10,
            start_timeout_secs: 60,
            max_exec_sync: 128,
        }
    }
}

impl Default for Image {
    fn default() -> Self {
        Image {
            stall_timeout_secs: 60,
            max_concurrent_downloads: 4,
            max_concurrent_pulls: 4,
            max_unpack_ratio: 100,
        }
    }
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses and checks config text; the error names the key and line.
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| one_line(text, &e))?;
        // runc is always there, whatever else is configured.
        for (name, r) in default_runtimes() {
            config.runtimes.entry(name).or_insert(r);
        }
        config.check()?;
        Ok(config)
    }

    /// Checks what the types alone do not.
    pub fn check(&self) -> Result<(), String> {
        let paths = [
            ("root", &self.root),
            ("state", &self.state),
            ("cri.socket", &self.cri.socket),
            ("admin.socket", &self.admin.socket),
            ("cni.conf_dir", &self.cni.conf_dir),
        ];
        for (key, path) in paths {
            if !path.is_absolute() {
                return Err(format!("{key}: {} is not an absolute path", path.display()));
            }
        }
        if self.cri.socket == self.admin.socket {
            return Err("admin.socket: must differ from cri.socket".into());
        }
        if self.cgroup.driver == CgroupDriver::Systemd {
            return Err("cgroup.driver: \"systemd\" is not supported yet; use \"cgroupfs\"".into());
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            format!(
                "log.level: {:?} is not a level or filter: {e}",
                self.log.level
            )
        })?;
        if self.chaos.interval_ms < 10 {
            return Err("chaos.interval_ms: must be at least 10".into());
        }
        if self.stream.tls_cert_file.is_some() != self.stream.tls_key_file.is_some() {
            return Err("stream: tls_cert_file and tls_key_file go together".into());
        }
        if self.stream.stream_creation_timeout_secs == 0 || self.stream.idle_timeout_secs == 0 {
            return Err("stream: timeouts must be at least 1 second".into());
        }
        const ACTORS: [&str; 5] = ["network", "shim", "image", "sandbox", "container"];
        if let Some(a) = self
            .chaos
            .actors
            .iter()
            .find(|a| !ACTORS.contains(&a.as_str()))
        {
            return Err(format!(
                "chaos.actors: {a:?} is not an actor (actors: {})",
                ACTORS.join(", ")
            ));
        }
        if self.cni.bin_dirs.iter().any(|d| !d.is_absolute()) {
            return Err("cni.bin_dirs: every directory must be an absolute path".into());
        }
        if self.cni.plugin_timeout_secs == 0 {
            return Err("cni.plugin_timeout_secs: must be at least 1".into());
        }
        for subnet in &self.cni.masquerade {
            berth_actors::network::masquerade::parse_cidr(subnet)
                .map_err(|e| format!("cni.masquerade: {e}"))?;
        }
        for (name, r) in &self.runtimes {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "runtimes.{name:?}: a handler name is letters, digits, - and _"
                ));
            }
            if r.binary.as_os_str().is_empty() {
                return Err(format!("runtimes.{name}.binary: empty"));
            }
            if r.timeout_secs == 0 {
                return Err(format!("runtimes.{name}.timeout_secs: must be at least 1"));
            }
            match (r.r#type, &r.shim) {
                (HandlerType::V2, None) => {
                    return Err(format!(
                        "runtimes.{name}.shim: a handler of type \"v2\" names its shim binary"
                    ))
                }
                (HandlerType::V2, Some(s)) if s.as_os_str().is_empty() => {
                    return Err(format!("runtimes.{name}.shim: empty"))
                }
                (HandlerType::Berth, Some(_)) => {
                    return Err(format!(
                        "runtimes.{name}.shim: only a handler of type \"v2\" has a shim (berth-shim is [shim])"
                    ))
                }
                _ => {}
            }
            if let Some(root) = &r.root {
                if !root.is_absolute() {
                    return Err(format!(
                        "runtimes.{name}.root: {} is not an absolute path",
                        root.display()
                    ));
                }
            }
        }
        if let Some(p) = &self.sandbox.pause_binary {
            if !p.is_absolute() {
                return Err(format!(
                    "sandbox.pause_binary: {} is not an absolute path",
                    p.display()
                ));
            }
        }
        berth_actors::sandbox::validate_cgroup_parent(&self.sandbox.cgroup_parent)
            .map_err(|e| format!("sandbox.cgroup_parent: {e}"))?;
        if self.sandbox.cgroup_parent.is_empty() {
            return Err("sandbox.cgroup_parent: must not be empty".into());
        }
        if self.image.stall_timeout_secs == 0 {
            return Err("image.stall_timeout_secs: must be at least 1".into());
        }
        if self.image.max_concurrent_downloads == 0 {
            return Err("image.max_concurrent_downloads: must be at least 1".into());
        }
        if self.image.max_concurrent_pulls == 0 {
            return Err("image.max_concurrent_pulls: must be at least 1".into());
        }
        for (host, r) in &self.registries {
            for m in &r.mirrors {
                if !(m.starts_with("http://") || m.starts_with("https://")) {
                    return Err(format!(
                        "registries.\"{host}\".mirrors: {m:?} must start with http:// or https://"
                    ));
                }
            }
            if let Some(ca) = &r.ca_file {
                if !ca.is_absolute() {
                    return Err(format!(
                        "registries.\"{host}\".ca_file: {} is not an absolute path",
                        ca.display()
                    ));
                }
            }
        }
        if self.daemon.start_timeout_secs == 0 {
            return Err("daemon.start_timeout_secs: must be at least 1".into());
        }
        if self.daemon.max_exec_sync == 0 {
            return Err("daemon.max_exec_sync: must be at least 1".into());
        }
        Ok(())
    }
}

/// toml's errors span several lines with a drawing; berthd says it in one,
/// with the line of the file that holds the key.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line_no = before.iter().filter(|b| **b == b'\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
            format!("line {line_no} ({line}): {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_defaults_equal_the_repository_config() {
        let text = include_str!("../../../config.toml");
        assert_eq!(
            Config::parse(text).expect("config.toml parses"),
            Config::default()
        );
        assert_eq!(Config::parse("").expect("empty"), Config::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_on_one_line() {
        let cases = [
            ("colour = 1\n", "unknown field `colour`"),
            ("[log]\njson = \"yes\"\n", "json = \"yes\""),
            ("[log]\nlevel = \"loud[\"\n", "log.level"),
            (
                "root = \"relative/dir\"\n",
                "root: relative/dir is not an absolute path",
            ),
            ("[cgroup]\ndriver = \"systemd\"\n", "cgroup.driver"),
            (
                "[cgroup]\ndriver = \"cgroupv3\"\n",
                "line 2 (driver = \"cgroupv3\")",
            ),
            ("[cri]\nsockets = \"/x\"\n", "unknown field `sockets`"),
            (
                "[daemon]\nshutdown_grace_secs = -1\n",
                "shutdown_grace_secs = -1",
            ),
            ("root = [\n", "line"),
            ("[chaos]\ninterval_ms = 1\n", "chaos.interval_ms"),
            ("[chaos]\nactors = [\"nope\"]\n", "chaos.actors: \"nope\""),
            ("[chaos]\nmode = \"boom\"\n", "mode = \"boom\""),
            (
                "[cni]\nmasquerade = [\"10.89.0.0\"]\n",
                "cni.masquerade: \"10.89.0.0\" is not a CIDR",
            ),
            (
                "[cni]\nmasquerade = [\"10.89.0.0/40\"]\n",
                "cni.masquerade: \"10.89.0.0/40\": the prefix length",
            ),
            (
                "[runtimes.kata]\ntype = \"v2\"\n",
                "runtimes.kata.shim: a handler of type \"v2\" names its shim",
            ),
            (
                "[runtimes.x]\nshim = \"containerd-shim-runc-v2\"\n",
                "runtimes.x.shim: only a handler of type \"v2\"",
            ),
            ("[runtimes.x]\ntype = \"v3\"\n", "type = \"v3\""),
        ];
        for (text, expected) in cases {
            let err = Config::parse(text).expect_err(text);
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{text:?}: {err}");
        }
    }
}
