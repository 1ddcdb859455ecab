//! Shared pieces of berth's benchmarks: latency samples, their percentiles,
//! and one table format with ratios against the references measured in the
//! same run (the floor, and the peer runtime where there is one).

use std::time::{Duration, Instant};

/// Latencies of one measured operation.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub name: String,
    pub latencies: Vec<Duration>,
    /// Wall time of the whole run (for throughput).
    pub wall: Duration,
}

impl Samples {
    pub fn new(name: impl Into<String>, mut latencies: Vec<Duration>, wall: Duration) -> Self {
        latencies.sort();
        Samples {
            name: name.into(),
            latencies,
            wall,
        }
    }

    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[idx.min(self.latencies.len() - 1)]
    }

    pub fn p50(&self) -> Duration {
        self.percentile(0.50)
    }

    pub fn p99(&self) -> Duration {
        self.percentile(0.99)
    }

    /// Operations per second over the run's wall time.
    pub fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Times `n` sequential runs of `op`.
pub async fn time_serial<F, Fut>(name: &str, n: usize, mut op: F) -> Samples
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        op().await;
        latencies.push(t.elapsed());
    }
    Samples::new(name, latencies, start.elapsed())
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// Prints a table of samples; `reference` names the row the ratio column
/// divides by (p50 over the reference's p50).
pub fn table(title: &str, rows: &[&Samples], references: &[&Samples]) {
    println!("\n## {title}\n");
    let mut header = format!(
        "{:<44} {:>7} {:>10} {:>10} {:>10}",
        "operation", "n", "p50 µs", "p99 µs", "ops/s"
    );
    for r in references {
        header.push_str(&format!(" {:>24}", format!("×{}", short(&r.name))));
    }
    println!("{header}");
    for s in rows {
        let mut line = format!(
            "{:<44} {:>7} {:>10} {:>10} {:>10.0}",
            s.name,
            s.latencies.len(),
            micros(s.p50()),
            micros(s.p99()),
            s.per_second()
        );
        for r in references {
            let ratio = s.p50().as_secs_f64() / r.p50().as_secs_f64().max(1e-12);
            line.push_str(&format!(" {:>24.2}", ratio));
        }
        println!("{line}");
    }
}

/// A reference's column header: the first two words of its name.
fn short(name: &str) -> String {
    name.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches([':', ','])
        .to_string()
}

/// The repository's root (bench/..).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench has a parent")
        .to_path_buf()
}

/// Debian's containerd with its CRI plugin, started beside berth by
/// shared/peers/containerd-peer; stopped (its pods removed) when dropped.
pub struct Peer {
    script: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

impl Peer {
    /// Starts the peer with `args` (see the script); None, with the reason
    /// printed, when the script is not there or containerd does not start.
    pub fn start(args: &[String]) -> Option<Peer> {
        let script = containerd_peer_script()?;
        let dir = tempfile::Builder::new()
            .prefix("berth-peer-")
            .tempdir()
            .ok()?;
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            .args(args)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "containerd peer did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(Peer { script, dir })
    }

    /// containerd's CRI socket.
    pub fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("run/containerd.sock")
    }

    /// containerd's own pid.
    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// The containerd peer script, if `shared/` sits beside the repository (or
/// `BERTH_PEER_SCRIPT` names it).
pub fn containerd_peer_script() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_PEER_SCRIPT") {
        return Some(p.into());
    }
    let p = repo_root().join("../shared/peers/containerd-peer");
    p.exists().then_some(p)
}

/// Pushes berth's pause program as an image, for the peer.
pub fn push_pause(reg: &berth_tests::registry::Registry, pause: &std::path::Path) -> String {
    let layer = berth_actors::image::sandbox_image::layer(pause).expect("pause layer");
    let diff = berth_tests::image::sha256_digest(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": [diff]},
    })
    .to_string();
    let config_digest = reg.push_blob("pause", config.as_bytes());
    let layer_digest = reg.push_blob("pause", &layer);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    reg.push_manifest(
        "pause",
        "bench",
        "application/vnd.oci.image.manifest.v1+json",
        manifest.as_bytes(),
    );
    reg.image_ref("pause", "bench")
}

/// The pod network the benchmarks give berth: bridge + host-local +
/// portmap + loopback, as the default network is (`ip_masq` false: berthd
/// masquerades the subnet with its node-wide chain, `[cni] masquerade`).
pub fn conflist(
    bridge: &str,
    subnet: &str,
    ipam: &std::path::Path,
    ip_masq: bool,
) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0", "name": "bench",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": ip_masq, "hairpinMode": true,
             "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    })
}

/// Whether network interface `name` exists.
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// The IPv4 network already on `bridge` (e.g. `10.78.0.0/16` for a
/// leftover peer0 with 10.78.0.1/16): the bridge plugin refuses a second
/// subnet on a bridge, so the peer must use the one there.
pub fn bridge_subnet(bridge: &str) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", bridge])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    let (addr, len) = cidr.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32))
    };
    let net = std::net::Ipv4Addr::from(u32::from(addr) & mask);
    Some(format!("{net}/{len}"))
}

/// Whether any interface is enslaved to `bridge`.
pub fn bridge_has_ports(bridge: &str) -> bool {
    std::fs::read_dir(
        std::path::Path::new("/sys/class/net")
            .join(bridge)
            .join("brif"),
    )
    .map(|d| d.count() > 0)
    .unwrap_or(false)
}

/// Every process on the node now.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// A process's resident memory, in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The busybox image both runtimes pull, in a local registry: the
/// registry, the image's reference and its one layer's bytes.
pub fn busybox_registry() -> (berth_tests::registry::Registry, String, Vec<u8>) {
    use berth_tests::image::{Compression, ImageBuilder, LayerBuilder};
    let layer = LayerBuilder::new().busybox().build(Compression::Gzip);
    let layer_bytes = layer.bytes.clone();
    let img = ImageBuilder::new()
        .layer(layer)
        .env("PATH", "/bin")
        .cmd(&["sh"])
        .build();
    let reg = berth_tests::registry::Registry::start();
    reg.push_image("busybox", Some("bench"), &img);
    let image = reg.image_ref("busybox", "bench");
    (reg, image, layer_bytes)
}

/// berthd (logging at warn) trusting `reg`, on its own network: `bridge`
/// with `subnet`, masqueraded by berthd; spawned.
pub fn berth_on_bridge(
    reg: &berth_tests::registry::Registry,
    bridge: &str,
    subnet: &str,
) -> berth_tests::Daemon {
    berth_configured_on_bridge(reg, bridge, subnet, "")
}

/// [`berth_on_bridge`] with `extra` (TOML) in berthd's configuration.
pub fn berth_configured_on_bridge(
    reg: &berth_tests::registry::Registry,
    bridge: &str,
    subnet: &str,
    extra: &str,
) -> berth_tests::Daemon {
    let mut d = berth_tests::Daemon::configure_logging(
        &format!(
            "{extra}\n[registries.\"{}\"]\ninsecure = true\n",
            reg.host()
        ),
        "warn",
    );
    let ipam = d.dir.path().join("ipam");
    std::fs::write(
        d.cni_dir().join("10-bench.conflist"),
        conflist(bridge, subnet, &ipam, false).to_string(),
    )
    .expect("conflist");
    d.masquerade(&[subnet]);
    d.spawn();
    d
}

/// The containerd peer's bridge, and the subnet it takes unless the bridge
/// is already there with one.
const PEER_BRIDGE: &str = "peer0";
const PEER_SUBNET: &str = "10.79.0.0/16";

/// containerd ready to run pods beside berth: berth's pause program as its
/// sandbox image (pushed to the registry it mirrors, and pulled), on its
/// own bridge. When dropped, containerd stops and the bridge goes unless
/// it was there before.
pub struct PodPeer {
    peer: Option<Peer>,
    bridge_was_there: bool,
}

impl PodPeer {
    /// None, with the reason printed, when the peer is not there or cannot
    /// pull its sandbox image.
    pub async fn start(reg: &berth_tests::registry::Registry) -> Option<PodPeer> {
        use berth_protocol::cri::image_service_client::ImageServiceClient;
        use berth_protocol::cri::{ImageSpec, PullImageRequest};
        let bridge_was_there = link_exists(PEER_BRIDGE);
        let sandbox_image = push_pause(reg, &berth_tests::bin("berth-pause"));
        let subnet = bridge_subnet(PEER_BRIDGE).unwrap_or_else(|| PEER_SUBNET.into());
        let Some(peer) = Peer::start(&[
            "--sandbox-image".into(),
            sandbox_image.clone(),
            "--subnet".into(),
            subnet,
            "--mirror".into(),
            format!("{}={}", reg.host(), reg.url()),
        ]) else {
            println!("(containerd peer not available)");
            return None;
        };
        let p = PodPeer {
            peer: Some(peer),
            bridge_was_there,
        };
        let mut images = ImageServiceClient::new(berth_tests::connect(&p.peer().socket()).await);
        let pulled = images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: sandbox_image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        match pulled {
            Ok(_) => Some(p),
            Err(e) => {
                eprintln!("containerd: PullImage {sandbox_image}: {e}");
                None
            }
        }
    }

    pub fn peer(&self) -> &Peer {
        self.peer.as_ref().expect("a started peer")
    }

    /// Where containerd's pods log.
    pub fn logs(&self) -> std::path::PathBuf {
        self.peer().dir.path().join("logs")
    }
}

impl Drop for PodPeer {
    fn drop(&mut self) {
        drop(self.peer.take());
        if !self.bridge_was_there && !bridge_has_ports(PEER_BRIDGE) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", PEER_BRIDGE])
                .status();
        }
    }
}

fn run(cmd: &mut std::process::Command) -> bool {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn runc(root: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new("runc");
    c.arg("--root").arg(root);
    c
}

/// The floor of a container's cycle: bare runc on a bundle of the busybox
/// `layer` (`sleep 1000`), `n` containers one after
/// another; per step and per cycle.
pub fn runc_floor(layer: &[u8], work: &std::path::Path, n: usize) -> Vec<Samples> {
    let rootfs = work.join("floor-rootfs");
    std::fs::create_dir_all(&rootfs).expect("rootfs");
    let layer_file = work.join("busybox-layer.tar.gz");
    std::fs::write(&layer_file, layer).expect("layer file");
    let ok = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&layer_file)
        .arg("-C")
        .arg(&rootfs)
        .status()
        .expect("tar");
    assert!(ok.success(), "tar -x of the busybox layer");

    let bundle = work.join("floor-bundle");
    std::fs::create_dir_all(&bundle).expect("bundle");
    let ok = std::process::Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .expect("runc spec");
    assert!(ok.success(), "runc spec");
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("spec json");
    spec["process"]["args"] = serde_json::json!(["sleep", "1000"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["root"]["path"] = serde_json::json!(rootfs);
    std::fs::write(&path, spec.to_string()).expect("config.json");

    let root = work.join("runc-root");
    let mut steps: [Vec<std::time::Duration>; 4] = Default::default();
    let mut cycle = Vec::with_capacity(n);
    let begin = std::time::Instant::now();
    for i in 0..n {
        let id = format!("bctrfloor-{}-{i}", std::process::id());
        let t = std::time::Instant::now();
        assert!(
            run(runc(&root)
                .args(["create", "--bundle"])
                .arg(&bundle)
                .arg(&id)),
            "runc create {id}"
        );
        let create_t = t.elapsed();
        let t = std::time::Instant::now();
        assert!(run(runc(&root).args(["start", &id])), "runc start {id}");
        let start_t = t.elapsed();
        let t = std::time::Instant::now();
        assert!(
            run(runc(&root).args(["kill", &id, "KILL"])),
            "runc kill {id}"
        );
        let kill_t = t.elapsed();
        // `runc delete` refuses while the process is still dying: retry
        // (the wait is part of the floor, as StopContainer waits too).
        let t = std::time::Instant::now();
        let mut tries = 0;
        while !run(runc(&root).args(["delete", &id])) {
            tries += 1;
            assert!(tries < 2000, "runc delete {id} kept failing");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let delete_t = t.elapsed();
        for (v, d) in steps.iter_mut().zip([create_t, start_t, kill_t, delete_t]) {
            v.push(d);
        }
        cycle.push(create_t + start_t + kill_t + delete_t);
    }
    let wall = begin.elapsed();
    let [c, s, k, d] = steps;
    vec![
        Samples::new("floor: runc create", c, wall),
        Samples::new("floor: runc start", s, wall),
        Samples::new("floor: runc kill KILL", k, wall),
        Samples::new("floor: runc delete", d, wall),
        Samples::new("floor: cycle (create+start+kill+delete)", cycle, wall),
    ]
}

/// A benchmark's pod: named `<prefix>-<tag>` (its hostname too), with the
/// UID `<prefix>-uid-<tag>` in namespace `bench`, logging under `logs`.
pub fn bench_pod(
    prefix: &str,
    tag: &str,
    logs: &std::path::Path,
) -> berth_protocol::cri::PodSandboxConfig {
    use berth_protocol::cri::{PodSandboxConfig, PodSandboxMetadata};
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("{prefix}-{tag}"),
            uid: format!("{prefix}-uid-{tag}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("{prefix}-{tag}"),
        log_directory: logs.display().to_string(),
        ..Default::default()
    }
}

/// A container of `image` running `command`, logging to `<name>.log`.
pub fn bench_container(
    name: &str,
    image: &str,
    command: &[&str],
) -> berth_protocol::cri::ContainerConfig {
    use berth_protocol::cri::{ContainerConfig, ContainerMetadata, ImageSpec};
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// A container of `image` running `sleep 1000`, logging to `<name>.log`.
pub fn sleeper(name: &str, image: &str) -> berth_protocol::cri::ContainerConfig {
    bench_container(name, image, &["sleep", "1000"])
}

/// Pulls `image` through the CRI socket at `socket`.
pub async fn pull(socket: &std::path::Path, image: &str) -> Result<(), String> {
    use berth_protocol::cri::image_service_client::ImageServiceClient;
    use berth_protocol::cri::{ImageSpec, PullImageRequest};
    let mut images = ImageServiceClient::new(berth_tests::connect(socket).await);
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("PullImage {image}: {:?}: {}", e.code(), e.message()))
}
