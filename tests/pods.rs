//! Pods end to end: RunPodSandbox and friends through berthd's CRI socket,
//! with real runc, real CNI plugins (containernetworking-plugins) and
//! berth-shim.

use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use berth_tests::node::{pod_config, remove_pod, run_pod};
use berth_tests::Daemon;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use tonic::transport::Channel;
use tonic::Code;

static NET: AtomicU32 = AtomicU32::new(0);

/// A daemon with its own bridge, subnet and IPAM directory.
struct Node {
    d: Daemon,
    ipam: PathBuf,
    bridge: String,
    subnet: String,
}

fn node() -> Node {
    let n = NET.fetch_add(1, Ordering::SeqCst) + (std::process::id() % 50) * 4;
    let mut d = Daemon::configure("");
    let bridge = format!("bz{}", std::process::id() % 10_000 * 10 + n % 10);
    let subnet = format!("10.{}.{}.0/24", 200 + (n / 200) % 50, n % 200);
    let ipam = d.dir.path().join("ipam");
    write_network(&d, &bridge, &subnet, &ipam, "bridge");
    d.spawn();
    Node {
        d,
        ipam,
        bridge,
        subnet,
    }
}

fn write_network(d: &Daemon, bridge: &str, subnet: &str, ipam: &Path, main: &str) {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "e2e",
        "plugins": [
            {"type": main, "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
             "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": subnet}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    });
    std::fs::write(d.cni_dir().join("10-e2e.conflist"), conf.to_string()).expect("conflist");
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// A pod shaped as kubelet sends it (no log directory: these pods run no
/// containers), labelled `app`.
fn config(name: &str) -> PodSandboxConfig {
    let mut c = pod_config(name, Path::new(""));
    c.labels.insert("app".into(), name.into());
    c
}

async fn status(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<PodSandboxStatusResponse, tonic::Status> {
    rt.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: true,
    })
    .await
    .map(|r| r.into_inner())
}

fn info(s: &PodSandboxStatusResponse) -> serde_json::Value {
    serde_json::from_str(&s.info["info"]).expect("info json")
}

fn ppid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("PPid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
        })
        .unwrap_or(0)
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Waits (up to 3 s) for a process to be gone; a zombie counts as gone.
async fn gone(pid: u32) -> bool {
    for _ in 0..300 {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let zombie = state
            .as_deref()
            .and_then(|s| s.rsplit_once(')'))
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if state.is_none() || zombie {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

fn mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path))
}

fn allocations(ipam: &Path) -> usize {
    std::fs::read_dir(ipam.join("e2e"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_pod_gets_an_ip_the_host_reaches_and_leaves_nothing_behind() {
    let n = node();
    let mut rt = n.d.runtime().await;
    let id = run_pod(&mut rt, config("web"))
        .await
        .expect("RunPodSandbox");
    let s = status(&mut rt, &id).await.expect("status");
    let st = s.status.as_ref().expect("status");
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    let ip = st.network.as_ref().expect("network").ip.clone();
    let prefix = n.subnet.trim_end_matches("0/24");
    assert!(ip.starts_with(prefix), "{ip} in {}", n.subnet);
    assert_eq!(st.labels["app"], "web");
    let ping = std::process::Command::new("ping")
        .args(["-c1", "-W3", &ip])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "the host reaches the pod: {ping:?}");

    // The pause process runs as its shim's child.
    let i = info(&s);
    let pid = i["pid"].as_u64().expect("pid") as u32;
    assert_eq!(comm(pid), "pause");
    let shim = ppid(pid);
    assert_eq!(comm(shim), "berth-shim", "parent of pause");
    let netns = i["netns"].as_str().expect("netns").to_string();
    assert!(mounted(&netns));
    let cgroup = i["cgroupsPath"].as_str().expect("cgroup").to_string();
    assert!(Path::new(&format!("/sys/fs/cgroup/memory{cgroup}")).is_dir());
    assert_eq!(allocations(&n.ipam), 1);

    // Listed, by filter.
    let listed = rt
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                label_selector: HashMap::from([("app".into(), "web".into())]),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .expect("stop");
    let s = status(&mut rt, &id).await.expect("status after stop");
    assert_eq!(
        s.status.expect("s").state,
        PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(allocations(&n.ipam), 0, "stop released the IP");
    assert!(gone(pid).await, "pause is gone");
    // Stop again: idempotent.
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .expect("stop twice");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .expect("remove");
    let err = status(&mut rt, &id).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        !mounted(&netns) && !Path::new(&netns).exists(),
        "netns removed"
    );
    assert!(gone(shim).await, "shim gone");
    assert!(
        !Path::new(&format!("/sys/fs/cgroup/memory{cgroup}")).exists(),
        "cgroup gone"
    );
    let state = n.d.dir.path().join("run");
    assert!(!state.join("shims").join(&id).exists(), "bundle gone");
    assert!(
        !state.join("sandboxes").join(&id).exists(),
        "pod files gone"
    );
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .expect("remove twice");
}

#[tokio::test]
async fn two_pods_reach_each_other_and_a_host_network_pod_has_no_netns() {
    let n = node();
    let mut rt = n.d.runtime().await;
    let a = run_pod(&mut rt, config("a")).await.expect("a");
    let b = run_pod(&mut rt, config("b")).await.expect("b");
    let ip_b = status(&mut rt, &b)
        .await
        .expect("b")
        .status
        .expect("s")
        .network
        .expect("n")
        .ip;
    let netns_a = info(&status(&mut rt, &a).await.expect("a"))["netns"]
        .as_str()
        .expect("netns")
        .to_string();
    // Into pod a's namespace (pinned under berth's state directory).
    let ok = std::process::Command::new("nsenter")
        .arg(format!("--net={netns_a}"))
        .args(["ping", "-c1", "-W3", &ip_b])
        .output()
        .expect("nsenter")
        .status
        .success();
    assert!(ok, "pod a reaches pod b at {ip_b}");

    let mut host = config("host");
    host.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let h = run_pod(&mut rt, host).await.expect("host network pod");
    let s = status(&mut rt, &h).await.expect("status");
    assert_eq!(info(&s)["netns"], "");
    let pid = info(&s)["pid"].as_u64().expect("pid");
    let own = std::fs::read_link("/proc/self/ns/net").expect("own netns");
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("pause netns");
    assert_eq!(own, theirs, "the host's network namespace");
    for id in [a, b, h] {
        remove_pod(&mut rt, &id).await.expect("stop and remove");
    }
    assert_eq!(allocations(&n.ipam), 0);
}

#[tokio::test]
async fn a_failing_cni_plugin_rolls_everything_back_and_a_retry_succeeds() {
    let n = node();
    write_network(&n.d, &n.bridge, &n.subnet, &n.ipam, "no-such-plugin");
    let mut rt = n.d.runtime().await;
    let err = run_pod(&mut rt, config("rb"))
        .await
        .expect_err("broken network");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("no-such-plugin"), "{err:?}");
    let listed = berth_tests::node::list_pods(&mut rt).await;
    assert!(listed.is_empty());
    let state = n.d.dir.path().join("run");
    for dir in ["netns", "shims", "sandboxes"] {
        let left = std::fs::read_dir(state.join(dir))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "{dir} left behind");
    }
    assert_eq!(allocations(&n.ipam), 0);
    // The same name is free again, and works once the network is fixed.
    write_network(&n.d, &n.bridge, &n.subnet, &n.ipam, "bridge");
    let id = run_pod(&mut rt, config("rb")).await.expect("retry");
    remove_pod(&mut rt, &id).await.expect("stop and remove");
}

#[tokio::test]
async fn bad_input_is_refused_and_names_are_reserved() {
    let n = node();
    let mut rt = n.d.runtime().await;
    let mut no_meta = config("x");
    no_meta.metadata = None;
    let mut bad_sysctl = config("x");
    bad_sysctl.linux = Some(LinuxPodSandboxConfig {
        sysctls: HashMap::from([("kernel.hostname".into(), "x".into())]),
        ..Default::default()
    });
    let mut bad_parent = config("x");
    bad_parent.linux = Some(LinuxPodSandboxConfig {
        cgroup_parent: "../../escape".into(),
        ..Default::default()
    });
    for (what, c, needle) in [
        ("metadata", no_meta, "metadata"),
        ("sysctl", bad_sysctl, "kernel.hostname"),
        ("cgroup parent", bad_parent, "cgroup parent"),
    ] {
        let err = run_pod(&mut rt, c).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(needle), "{what}: {err:?}");
    }
    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config("x")),
            runtime_handler: "kata".into(),
        })
        .await
        .expect_err("unknown handler");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kata"), "{err:?}");

    let err = status(&mut rt, "0123456789abcdef")
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .expect("stop of an unknown pod is success");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .expect("remove of an unknown pod is success");

    let id = run_pod(&mut rt, config("dup")).await.expect("first");
    let err = run_pod(&mut rt, config("dup"))
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&id), "names the holder: {err:?}");
    remove_pod(&mut rt, &id).await.expect("stop and remove");
}

#[tokio::test]
async fn the_pause_process_survives_kill_9_of_berthd() {
    let mut n = node();
    let mut rt = n.d.runtime().await;
    let id = run_pod(&mut rt, config("survivor")).await.expect("run");
    let pid = info(&status(&mut rt, &id).await.expect("status"))["pid"]
        .as_u64()
        .expect("pid") as u32;
    n.d.kill9();
    assert_eq!(comm(pid), "pause", "alive while berthd is down");
    n.d.spawn();
    let mut rt = n.d.runtime().await;
    let s = status(&mut rt, &id).await.expect("status after restart");
    assert_eq!(
        s.status.expect("s").state,
        PodSandboxState::SandboxReady as i32
    );
    assert_eq!(comm(pid), "pause");
    remove_pod(&mut rt, &id).await.expect("stop and remove");
    assert!(gone(pid).await);
}

#[tokio::test]
async fn a_port_mapping_is_reachable_on_the_host_port() {
    let n = node();
    let mut rt = n.d.runtime().await;
    let mut c = config("ports");
    let host_port = 20000 + (std::process::id() % 20000) as i32;
    c.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: String::new(),
    }];
    let id = run_pod(&mut rt, c).await.expect("run");
    let s = status(&mut rt, &id).await.expect("status");
    let netns = info(&s)["netns"].as_str().expect("netns").to_string();
    // A server inside the pod's network namespace.
    let mut server = std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args([
            "/bin/busybox",
            "nc",
            "-l",
            "-p",
            "8080",
            "-e",
            "/bin/busybox",
            "echo",
            "hello from the pod",
        ])
        .spawn()
        .expect("server in the pod");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The bridge's own address is local to the host: DNAT to the pod.
    let gateway = n.subnet.replace("0/24", "1");
    let reply = std::process::Command::new("/bin/busybox")
        .args(["nc", "-w", "3", &gateway, &host_port.to_string()])
        .output()
        .expect("client");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        String::from_utf8_lossy(&reply.stdout).trim(),
        "hello from the pod"
    );
    remove_pod(&mut rt, &id).await.expect("stop and remove");
    let rules = std::process::Command::new("iptables-save")
        .output()
        .expect("iptables-save");
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains(&format!("--dport {host_port}")),
        "port mapping rules removed"
    );
}

#[tokio::test]
async fn the_sandbox_image_is_berths_own_pinned_and_shm_is_per_pod() {
    let n = node();
    let mut rt = n.d.runtime().await;
    let mut images = n.d.images().await;
    let pause_image = |list: Vec<Image>| {
        list.into_iter().find(|i| {
            i.repo_tags
                .iter()
                .any(|t| t.starts_with("berth.local/pause:"))
        })
    };
    // Made at start-up, before the CRI socket served: no pod builds it.
    let list = images
        .list_images(ListImagesRequest::default())
        .await
        .expect("images")
        .into_inner()
        .images;
    let pause = pause_image(list).expect("the sandbox image is there before any pod");
    assert!(pause.pinned, "kubelet's GC leaves it alone");
    let id = run_pod(&mut rt, config("shm")).await.expect("run");
    let shm = n.d.dir.path().join("run/sandboxes").join(&id).join("shm");
    assert!(mounted(&shm.display().to_string()), "a tmpfs for /dev/shm");
    let list = images
        .list_images(ListImagesRequest::default())
        .await
        .expect("images")
        .into_inner()
        .images;
    assert_eq!(
        pause_image(list).map(|i| i.id),
        Some(pause.id),
        "the same image"
    );
    remove_pod(&mut rt, &id).await.expect("stop and remove");
    assert!(!mounted(&shm.display().to_string()), "shm unmounted");
}

async fn not_ready_soon(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> bool {
    for _ in 0..200 {
        let s = status(rt, id).await.expect("status").status.expect("s");
        if s.state == PodSandboxState::SandboxNotready as i32 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_pause_container_that_dies_leaves_its_pod_not_ready() {
    let mut n = node();
    let mut rt = n.d.runtime().await;
    // While berthd runs: the shim's exit event says so.
    let a = run_pod(&mut rt, config("dies")).await.expect("run");
    let pid = info(&status(&mut rt, &a).await.expect("status"))["pid"]
        .as_u64()
        .expect("pid");
    berth_tests::signal(pid as u32, libc::SIGKILL);
    assert!(
        not_ready_soon(&mut rt, &a).await,
        "not ready after the pause died"
    );
    // Status may read the exit record the shim writes before it sends
    // the event: the event comes just after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !n.d.log().contains("TaskExit") {
        assert!(
            std::time::Instant::now() < deadline,
            "learnt through the events endpoint"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // While berthd is down: the exit record the shim left says so.
    let b = run_pod(&mut rt, config("dies-alone")).await.expect("run");
    let pid = info(&status(&mut rt, &b).await.expect("status"))["pid"]
        .as_u64()
        .expect("pid");
    n.d.kill9();
    berth_tests::signal(pid as u32, libc::SIGKILL);
    assert!(gone(pid as u32).await);
    n.d.spawn();
    let mut rt = n.d.runtime().await;
    assert!(not_ready_soon(&mut rt, &b).await, "not ready after restart");
    for id in [a, b] {
        remove_pod(&mut rt, &id).await.expect("stop and remove");
    }
    assert_eq!(allocations(&n.ipam), 0);
}

#[tokio::test]
async fn a_pod_sysctl_is_set_in_its_network_namespace() {
    let n = node();
    let mut rt = n.d.runtime().await;
    let mut c = config("sysctl");
    c.linux = Some(LinuxPodSandboxConfig {
        sysctls: HashMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "80".into())]),
        ..Default::default()
    });
    let id = run_pod(&mut rt, c).await.expect("run");
    let netns = info(&status(&mut rt, &id).await.expect("status"))["netns"]
        .as_str()
        .expect("netns")
        .to_string();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"])
        .output()
        .expect("nsenter");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "80");
    let host =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").expect("host");
    assert_ne!(host.trim(), "80", "the host's own value is untouched");
    remove_pod(&mut rt, &id).await.expect("stop and remove");
}
