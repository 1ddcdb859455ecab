//! Pods in user namespaces of their own (CRI `userns_options` mode POD):
//! the pod's root is a user the node does not know, yet owns its
//! container's files, through idmapped image layers.

use berth_protocol::cri::*;
use berth_tests::eventually;
use berth_tests::node::{
    container_config, container_pid, container_status, create_container, pod_config, remove_pod,
    run_pod, sh, start_container, Node,
};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;
use tonic::Code;

const HOST_UID: u32 = 300_000;
const HOST_GID: u32 = 400_000;
const LENGTH: u32 = 65_536;

fn userns(mode: NamespaceMode, uids: Vec<IdMapping>, gids: Vec<IdMapping>) -> UserNamespace {
    UserNamespace {
        mode: mode as i32,
        uids,
        gids,
    }
}

fn mapping(host_id: u32, container_id: u32, length: u32) -> Vec<IdMapping> {
    vec![IdMapping {
        host_id,
        container_id,
        length,
    }]
}

/// The pod's own user namespace with the test's mapping.
fn own() -> UserNamespace {
    userns(
        NamespaceMode::Pod,
        mapping(HOST_UID, 0, LENGTH),
        mapping(HOST_GID, 0, LENGTH),
    )
}

fn with_userns(mut pod: PodSandboxConfig, u: UserNamespace) -> PodSandboxConfig {
    let linux = pod.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    let ns = sc.namespace_options.get_or_insert_with(Default::default);
    ns.userns_options = Some(u);
    pod
}

fn announced(status: &StatusResponse) -> bool {
    status
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .and_then(|h| h.features.as_ref())
        .is_some_and(|f| f.user_namespaces)
}

#[tokio::test]
async fn a_pods_root_owns_its_files_through_idmapped_layers_and_nothing_is_left() {
    let mut n = Node::new("un", "");
    // As on a node: berth's state is reachable by users it does not know.
    std::fs::set_permissions(n.d.dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod");
    n.d.spawn();
    n.pull().await;
    let mut rt = n.d.runtime().await;
    let status = rt
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(announced(&status), "{:?}", status.runtime_handlers);

    // Bad user namespace requests change nothing.
    let bad = [
        (
            userns(
                NamespaceMode::Pod,
                mapping(HOST_UID, 1, LENGTH),
                mapping(HOST_GID, 0, LENGTH),
            ),
            "container ID 0",
        ),
        (
            userns(NamespaceMode::Container, vec![], vec![]),
            "mode CONTAINER",
        ),
        (
            userns(
                NamespaceMode::Pod,
                mapping(HOST_UID, 0, LENGTH),
                mapping(HOST_GID, 0, 10),
            ),
            "length",
        ),
    ];
    for (u, why) in bad {
        let err = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(with_userns(pod_config("userns-bad", &n.logs()), u)),
                runtime_handler: String::new(),
            })
            .await
            .expect_err("a bad mapping");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("userns_options") && err.message().contains(why),
            "{err:?}"
        );
    }

    let pod = run_pod(&mut rt, with_userns(pod_config("userns", &n.logs()), own()))
        .await
        .expect("a pod in its own user namespace");
    let shown = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .and_then(|s| s.linux?.namespaces?.options?.userns_options)
        .expect("userns options shown");
    assert_eq!(shown.mode, NamespaceMode::Pod as i32);
    assert_eq!(shown.uids, mapping(HOST_UID, 0, LENGTH));

    let c = create_container(
        &mut rt,
        &pod,
        container_config(
            "app",
            &n.image,
            &[
                "sh",
                "-c",
                "cat /proc/self/uid_map; echo made > /made; ls -ln /made /bin/busybox; sleep 1000",
            ],
        ),
    )
    .await
    .expect("create");
    start_container(&mut rt, &c).await.expect("start");
    let log_path = container_status(&mut rt, &c)
        .await
        .expect("status")
        .log_path;
    let log = eventually(Duration::from_secs(10), "the container's output", || {
        let p = log_path.clone();
        async move {
            let text = std::fs::read_to_string(&p).ok()?;
            text.contains("busybox").then_some(text)
        }
    })
    .await;
    let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let map_line = log
        .lines()
        .find(|l| l.contains(" F ") && words(l).len() == 6)
        .expect("uid_map line");
    assert_eq!(words(map_line)[3..], ["0", "300000", "65536"], "{log}");
    // Inside, the image's files and the new one are root's.
    for name in ["/made", "/bin/busybox"] {
        let line = log
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("{name} listed: {log}"));
        assert_eq!(words(line)[5..7], ["0", "0"], "{line}");
    }
    // On the node, the container runs as the mapped user, and what it
    // wrote belongs to that user.
    let pid = container_pid(&mut rt, &c).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    assert_eq!(words(uid_line)[1], HOST_UID.to_string(), "{uid_line}");
    let upper =
        n.d.root()
            .join("rootfs")
            .join(&c)
            .join("upper")
            .join("made");
    let meta = std::fs::metadata(&upper).expect("the new file in the writable layer");
    assert_eq!((meta.uid(), meta.gid()), (HOST_UID, HOST_GID));
    assert_eq!(sh(&mut rt, &c, "id -u").await, ("0".into(), 0));

    remove_pod(&mut rt, &pod).await.expect("remove");
    let pins: Vec<_> = std::fs::read_dir(n.d.dir.path().join("run/userns"))
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    assert!(pins.is_empty(), "{pins:?}");
    n.assert_consistent();

    // Where a pod's root could not reach berth's state, berth says so and
    // makes no such pod.
    n.d.kill9();
    std::fs::set_permissions(n.d.dir.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    n.d.spawn();
    let mut rt = n.d.runtime().await;
    let status = rt
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(!announced(&status));
    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(with_userns(pod_config("userns-no", &n.logs()), own())),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("not here");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not searchable"), "{err:?}");
    n.assert_consistent();
}
