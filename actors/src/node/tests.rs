use super::*;
use crate::image::store::ImageRecord;
use crate::journal::{MemoryJournal, Tree};
use crate::kernel::{ActorSnapshot, ActorStatus, By, ControlOp};
use crate::network::messages::NetworkStatus;
use crate::Error;

fn config(dir: &std::path::Path) -> NodeConfig {
    NodeConfig {
        network: NetworkConfig::under(dir),
        shim: crate::shim::ShimConfig {
            state: dir.join("state"),
            shim_binary: dir.join("berth-shim"),
            runtimes: Default::default(),
            events_socket: None,
            max_exec_sync: 16,
        },
        sandbox: crate::sandbox::SandboxConfig {
            state: dir.join("state"),
            pause_binary: dir.join("berth-pause"),
            cgroup_parent: "/berth-test".into(),
            runtime_handlers: Default::default(),
            unusable_handlers: Default::default(),
            user_namespaces: Default::default(),
        },
        image: ImageConfig {
            root: dir.join("root"),
            state: dir.join("state"),
            registries: Default::default(),
            stall_timeout: Duration::from_secs(5),
            max_concurrent_downloads: 3,
            max_concurrent_pulls: 4,
            max_unpack_ratio: 100,
            platform: crate::image::manifest::Platform::host(),
        },
        host: Arc::new(crate::host::HostFacts::default()),
        start_timeout: Duration::from_secs(10),
        criu: Arc::new(crate::container::checkpoint::criu::CriuProbe::new(
            Box::new(crate::container::checkpoint::criu::CriuBinary::default()),
        )),
    }
}

/// A node on `journal`, with an empty CNI config directory.
async fn started(journal: Arc<dyn Journal>) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("cni")).expect("cni dir");
    let kernel = Node::start(journal, config(dir.path()))
        .await
        .expect("start");
    (dir, kernel)
}

async fn wait_running_again(kernel: &Node, name: &str, restarts: u64) -> ActorSnapshot {
    for _ in 0..500 {
        if let Some(s) = kernel.registry().get(name) {
            if s.restarts == restarts && s.status == ActorStatus::Running {
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{name} did not come back: {:?}",
        kernel.registry().get(name)
    );
}

#[tokio::test]
async fn every_actor_starts_and_answers() {
    let (_dir, kernel) = started(Arc::new(MemoryJournal::new())).await;
    assert_eq!(
        kernel.actor_names(),
        vec!["network", "shim", "image", "sandbox", "container"]
    );
    for snap in kernel.registry().snapshot() {
        assert_eq!(snap.status, ActorStatus::Running, "{snap:?}");
        assert_eq!(snap.restarts, 0);
        assert_eq!(snap.mailbox, 0);
    }
    let err = kernel.control("nope", ControlOp::Ping).await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound(ref m) if m.contains("nope")),
        "{err}"
    );
    kernel.shutdown().expect("shutdown");
}

#[tokio::test]
async fn killed_and_panicked_actors_restart_and_rebuild_from_the_journal() {
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let (_dir, kernel) = started(journal.clone()).await;
    for name in kernel.actor_names() {
        let before = kernel.control(name, ControlOp::Ping).await.expect("ping");
        let reply = kernel
            .control(name, ControlOp::Kill(By::Operator))
            .await
            .expect("kill");
        assert_eq!(reply.restarts_before, 0);
        wait_running_again(&kernel, name, 1).await;
        let after = kernel.control(name, ControlOp::Ping).await.expect("ping");
        assert_eq!(after.generation, before.generation + 1, "{name}");

        let err = kernel
            .control(name, ControlOp::Panic(By::Operator))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Unavailable(ref m) if m.contains("panic injected")),
            "{name}: {err}"
        );
        let snap = wait_running_again(&kernel, name, 2).await;
        assert!(snap.last_error.contains("panic injected"), "{snap:?}");
        assert_eq!(snap.failed, 1, "{snap:?}");
        assert_eq!(snap.mailbox, 0, "{snap:?}");
        kernel
            .control(name, ControlOp::Ping)
            .await
            .expect("ping after panic");
    }

    // A record the image actor did not have in memory is there after its restart.
    assert_eq!(
        kernel
            .control("image", ControlOp::Ping)
            .await
            .expect("ping")
            .records,
        0
    );
    let tree = Tree::<ImageRecord>::open(journal, "image").expect("tree");
    tree.put(&ImageRecord {
        id: "sha256:abc".into(),
        repo_tags: vec!["example.com/a:1".into()],
        repo_digests: vec![],
        size: 1,
        blobs: vec![],
        chain_ids: vec![],
        user: String::new(),
        pinned: false,
        created_unix_nanos: 0,
    })
    .expect("put");
    kernel
        .control("image", ControlOp::Kill(By::Operator))
        .await
        .expect("kill");
    wait_running_again(&kernel, "image", 3).await;
    assert_eq!(
        kernel
            .control("image", ControlOp::Ping)
            .await
            .expect("ping")
            .records,
        1
    );
    kernel.shutdown().expect("shutdown");
}

#[tokio::test]
async fn messages_queued_behind_a_panic_are_served_after_the_restart() {
    let (_dir, kernel) = started(Arc::new(MemoryJournal::new())).await;
    let panic = kernel.control("network", ControlOp::Panic(By::Operator));
    let statuses: Vec<_> = (0..20)
        .map(|_| kernel.network.call(NetworkStatus))
        .collect();
    let (panicked, answers) = futures::join!(panic, futures::future::join_all(statuses));
    assert!(matches!(panicked, Err(Error::Unavailable(_))));
    for a in answers {
        let readiness = a.expect("served after restart");
        assert!(!readiness.ready);
        assert_eq!(readiness.reason, "NetworkPluginNotReady");
    }
    assert_eq!(kernel.registry().get("network").expect("cell").mailbox, 0);
    kernel.shutdown().expect("shutdown");
}

#[tokio::test]
async fn network_turns_ready_when_a_cni_config_appears() {
    let (dir, kernel) = started(Arc::new(MemoryJournal::new())).await;
    let r = kernel.network.call(NetworkStatus).await.expect("status");
    assert!(!r.ready && r.message.contains("no network config"), "{r:?}");
    std::fs::write(
        dir.path().join("cni/10-pod.conflist"),
        r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"}]}"#,
    )
    .expect("write");
    let r = kernel.network.call(NetworkStatus).await.expect("status");
    assert!(r.ready, "{r:?}");
    kernel.shutdown().expect("shutdown");
}

#[tokio::test]
async fn boots_are_recorded_and_a_clean_shutdown_is_marked() {
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let (dir, kernel) = started(journal.clone()).await;
    kernel.shutdown().expect("shutdown");
    let kernel = Node::start(journal, config(dir.path()))
        .await
        .expect("start");
    let boots: Vec<_> = kernel
        .boots()
        .expect("boots")
        .iter()
        .map(|b| (b.seq, b.clean_shutdown))
        .collect();
    assert_eq!(boots, vec![(1, true), (2, false)]);
    kernel.shutdown().expect("shutdown");
}

#[tokio::test]
async fn a_pods_containers_end_before_the_pod_and_a_failure_keeps_the_pod() {
    use crate::container::messages::PodContainers;
    use crate::kernel::{Fakes, Link};
    use crate::sandbox::messages::{RemovePodSandbox, StopPodSandbox};
    let fakes = Fakes::new();
    fakes.on(|_: PodContainers| Ok(()));
    fakes.on(|_: StopPodSandbox| Ok(()));
    fakes.on(|_: RemovePodSandbox| Ok(()));
    let (containers, sandboxes) = (Link::fake(&fakes), Link::fake(&fakes));
    end_pod(&containers, &sandboxes, "p".into(), false)
        .await
        .expect("stop");
    end_pod(&containers, &sandboxes, "p".into(), true)
        .await
        .expect("remove");
    assert_eq!(
        fakes.log(),
        [
            "PodContainers",
            "StopPodSandbox",
            "PodContainers",
            "RemovePodSandbox"
        ]
    );
    fakes.on(|_: PodContainers| -> crate::Result<()> {
        Err(Error::Unavailable(
            "the container actor is restarting".into(),
        ))
    });
    let err = end_pod(&containers, &sandboxes, "p".into(), true)
        .await
        .expect_err("containers first");
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert_eq!(
        fakes.log().last().map(String::as_str),
        Some("PodContainers")
    );
}
