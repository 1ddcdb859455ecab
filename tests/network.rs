//! The pod network's way off the node: berthd masquerades its pod subnet
//! with one chain of its own (`[cni] masquerade`), so a pod reaches an
//! address the node routes elsewhere, whose side has no route back to the
//! pod subnet; and the chain goes when the setting is emptied.

use berth_protocol::cri::*;
use berth_tests::node::{
    container_config, create_container, pod_config, remove_pod, run_pod, start_container, Node,
};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A network namespace beyond the node, joined to the host by a veth pair
/// on a /30 of its own: it knows that /30 and nothing else.
struct Outside {
    netns: String,
    address: String,
}

impl Outside {
    fn new() -> Outside {
        let pid = std::process::id();
        let netns = format!("bout{pid}");
        let (host_if, ns_if) = (
            format!("boh{}", pid % 100_000),
            format!("bon{}", pid % 100_000),
        );
        let net = format!("10.251.{}", pid % 250);
        let ip = |args: &[&str]| {
            let ok = Command::new("ip")
                .args(args)
                .status()
                .expect("ip")
                .success();
            assert!(ok, "ip {}", args.join(" "));
        };
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &netns]);
        ip(&["addr", "add", &format!("{net}.1/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &netns, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        in_ns(&["addr", "add", &format!("{net}.2/30"), "dev", &ns_if]);
        in_ns(&["link", "set", &ns_if, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        Outside {
            netns,
            address: format!("{net}.2"),
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// The chain's rules, or None when it does not exist.
fn chain_rules(chain: &str) -> Option<String> {
    let out = Command::new("iptables")
        .args(["-w", "5", "-t", "nat", "-S", chain])
        .stderr(Stdio::null())
        .output()
        .expect("iptables");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn a_pod_reaches_beyond_the_node_through_berths_masquerade() {
    let mut n = Node::running("bn", "").await;
    let chain = n.d.masquerade_chain();
    let rules = chain_rules(&chain).expect("berthd made its masquerade chain");
    assert!(
        rules.contains(&format!("-A {chain} -s {} -j MASQUERADE", n.subnet)),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("-A {chain} -d {} -j RETURN", n.subnet)),
        "pod to pod is not masqueraded: {rules}"
    );

    let outside = Outside::new();
    // Listening before the pod connects; it gives up after 10 s.
    let listener = Command::new("ip")
        .args(["netns", "exec", &outside.netns, "timeout", "10"])
        .args(["/bin/busybox", "nc", "-l", "-p", "9000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("listener beyond the node");
    std::thread::sleep(Duration::from_millis(300));

    let mut rt = n.d.runtime().await;
    let pod = run_pod(&mut rt, pod_config("egress", &n.logs()))
        .await
        .expect("RunPodSandbox");
    let ctr = create_container(
        &mut rt,
        &pod,
        container_config("client", &n.image, &["sleep", "1000"]),
    )
    .await
    .expect("CreateContainer");
    start_container(&mut rt, &ctr)
        .await
        .expect("StartContainer");
    let sent = rt
        .exec_sync(ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "echo through the masquerade | nc -w 3 {} 9000",
                    outside.address
                ),
            ],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    let got = listener.wait_with_output().expect("listener");
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "through the masquerade",
        "the outside had no route back to {}: only a masqueraded connection gets through (nc: {:?})",
        n.subnet,
        String::from_utf8_lossy(&sent.stderr)
    );

    remove_pod(&mut rt, &pod)
        .await
        .expect("stop and remove the pod");
    n.assert_consistent();

    // Emptied: berthd removes its chain and the jump to it.
    n.d.terminate(Duration::from_secs(20));
    let config = std::fs::read_to_string(&n.d.config).expect("config");
    let config = config
        .lines()
        .map(|l| {
            if l.starts_with("masquerade = ") {
                "masquerade = []"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&n.d.config, config).expect("config");
    n.d.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while chain_rules(&chain).is_some() {
        assert!(
            Instant::now() < deadline,
            "the chain {chain} is still there"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let postrouting = Command::new("iptables")
        .args(["-w", "5", "-t", "nat", "-S", "POSTROUTING"])
        .output()
        .expect("iptables");
    assert!(
        !String::from_utf8_lossy(&postrouting.stdout).contains(&chain),
        "the jump to {chain} is gone"
    );
}

#[tokio::test]
async fn kubelets_pod_cidr_reaches_cni_and_outlives_a_restart() {
    let mut n = Node::new("pc", "");
    // The node's bridge takes its range from the runtime config alone
    // (host-local adds the ranges it is given to any of its own).
    let file = n.d.cni_dir().join("10-node.conflist");
    let mut conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("conflist")).expect("json");
    conf["plugins"][0]["capabilities"] = serde_json::json!({"ipRanges": true});
    if let Some(ipam) = conf["plugins"][0]["ipam"].as_object_mut() {
        ipam.remove("ranges");
    }
    std::fs::write(&file, conf.to_string()).expect("conflist");
    n.d.spawn();
    n.pull().await;
    let mut rt = n.d.runtime().await;
    let set = |cidr: &str| UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    };
    for bad in ["10.0.0.0/33", "10.0.0.0", "10.1.0.0/24,10.2.0.0/24", "x/8"] {
        let err = rt
            .update_runtime_config(set(bad))
            .await
            .expect_err("a bad CIDR");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err:?}");
        assert!(err.message().contains("pod_cidr"), "{err:?}");
    }
    let third = std::process::id() % 250;
    let cidr = format!("10.252.{third}.16/28");
    rt.update_runtime_config(set(&cidr))
        .await
        .expect("UpdateRuntimeConfig");
    let in_cidr = |ip: &str| {
        ip.strip_prefix(&format!("10.252.{third}."))
            .and_then(|last| last.parse::<u8>().ok())
            .is_some_and(|last| (17..31).contains(&last))
    };
    let pod_ip = |rt: &mut berth_protocol::cri::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
                  id: String| {
        let mut rt = rt.clone();
        async move {
            rt.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default()
        }
    };
    let first = run_pod(&mut rt, pod_config("cidr-a", &n.logs()))
        .await
        .expect("RunPodSandbox");
    let ip = pod_ip(&mut rt, first.clone()).await;
    assert!(in_cidr(&ip), "{ip} in {cidr}");

    // Kept across a restart.
    n.d.terminate(Duration::from_secs(10));
    n.d.spawn();
    let mut rt = n.d.runtime().await;
    let second = run_pod(&mut rt, pod_config("cidr-b", &n.logs()))
        .await
        .expect("RunPodSandbox after a restart");
    let ip = pod_ip(&mut rt, second.clone()).await;
    assert!(in_cidr(&ip), "{ip} in {cidr}");
    for id in [first, second] {
        remove_pod(&mut rt, &id).await.expect("remove");
    }
    n.assert_consistent();
}
