//! Containers end to end, the seed example: a pod, an image pulled from a
//! real registry, a container created and started in the pod, its log,
//! its exit code, stop and removal; with real runc, CNI and berth-shim.

use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use berth_tests::image::{Compression, ImageBuilder, LayerBuilder};
use berth_tests::registry::Registry;
use berth_tests::Daemon;
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

struct Setup {
    d: Daemon,
    image: String,
    _reg: Registry,
    bridge: String,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn setup() -> Setup {
    let reg = Registry::start();
    let img = ImageBuilder::new()
        .layer(LayerBuilder::new().busybox().build(Compression::Gzip))
        .env("PATH", "/bin")
        .cmd(&["sh"])
        .build();
    reg.push_image("busybox", Some("e2e"), &img);
    let mut d = Daemon::configure(&format!(
        "[registries.\"{}\"]\ninsecure = true\n",
        reg.host()
    ));
    // Each test its own bridge and subnet: they run side by side.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let n = (std::process::id() % 50) * 4 + k % 4;
    let bridge = format!("bc{}x{k}", std::process::id() % 10_000);
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "ctr",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true,
             "ipam": {"type": "host-local", "dataDir": d.dir.path().join("ipam"),
                      "ranges": [[{"subnet": format!("10.251.{n}.0/24")}]]}},
            {"type": "loopback"}
        ]
    });
    std::fs::write(d.cni_dir().join("10-ctr.conflist"), conf.to_string()).expect("conflist");
    d.spawn();
    Setup {
        image: reg.image_ref("busybox", "e2e"),
        d,
        _reg: reg,
        bridge,
    }
}

async fn pod(rt: &mut RuntimeServiceClient<Channel>, name: &str, logs: &Path) -> String {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "e2e".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.display().to_string(),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    })
    .await
    .expect("RunPodSandbox")
    .into_inner()
    .pod_sandbox_id
}

fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
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
        log_path: format!("{name}/0.log"),
        labels: [("app".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

async fn create(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    config: ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().container_id)
}

async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    rt.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("ContainerStatus")
    .into_inner()
    .status
    .expect("status")
}

async fn exited(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    for _ in 0..500 {
        let s = status(rt, id).await;
        if s.state == ContainerState::ContainerExited as i32 {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("container {id} did not exit");
}

async fn pull(d: &Daemon, image: &str) {
    d.images()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("PullImage");
}

#[tokio::test]
async fn the_seed_example_runs_logs_exits_stops_and_is_removed() {
    let s = setup();
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let p = pod(&mut rt, "seed", &logs).await;
    pull(&s.d, &s.image).await;

    // A container that writes and exits 3.
    let script = "echo hello; printf partial; echo; echo oops >&2; exit 3";
    let c = create(
        &mut rt,
        &p,
        container("job", &s.image, &["sh", "-c", script]),
    )
    .await
    .expect("CreateContainer");
    let st = status(&mut rt, &c).await;
    assert_eq!(st.state, ContainerState::ContainerCreated as i32);
    rt.start_container(StartContainerRequest {
        container_id: c.clone(),
    })
    .await
    .expect("StartContainer");
    let st = exited(&mut rt, &c).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));
    assert!(st.finished_at >= st.started_at && st.started_at > 0);
    let log = std::fs::read_to_string(logs.join("job/0.log")).expect("log file");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F hello")),
        "{log}"
    );
    assert!(lines.iter().any(|l| l.ends_with(" stderr F oops")), "{log}");
    assert_eq!(st.log_path, logs.join("job/0.log").display().to_string());

    // A long-running one: stopped with its signal, exit code recorded.
    let l = create(
        &mut rt,
        &p,
        container("sleeper", &s.image, &["sleep", "1000"]),
    )
    .await
    .expect("create sleeper");
    rt.start_container(StartContainerRequest {
        container_id: l.clone(),
    })
    .await
    .expect("start sleeper");
    assert_eq!(
        status(&mut rt, &l).await.state,
        ContainerState::ContainerRunning as i32
    );
    let listed = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: p.clone(),
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, l);
    // ExecSync: output, exit codes, and the deadline.
    let exec = |cmd: &[&str], timeout: i64| ExecSyncRequest {
        container_id: l.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    };
    let out = rt
        .exec_sync(exec(&["echo", "probe ok"], 5))
        .await
        .expect("exec")
        .into_inner();
    assert_eq!(
        (out.stdout.as_slice(), out.exit_code),
        (&b"probe ok\n"[..], 0)
    );
    let out = rt
        .exec_sync(exec(&["sh", "-c", "echo bad >&2; exit 7"], 5))
        .await
        .expect("exec")
        .into_inner();
    assert_eq!((out.stderr.as_slice(), out.exit_code), (&b"bad\n"[..], 7));
    let t = std::time::Instant::now();
    let err = rt
        .exec_sync(exec(&["sleep", "30"], 1))
        .await
        .expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // A command that leaves a child holding its output does not hang.
    let out = rt
        .exec_sync(exec(&["sh", "-c", "sleep 30 & echo left"], 5))
        .await
        .expect("exec with a background child")
        .into_inner();
    assert_eq!(out.stdout, b"left\n");

    rt.stop_container(StopContainerRequest {
        container_id: l.clone(),
        timeout: 5,
    })
    .await
    .expect("stop");
    let st = status(&mut rt, &l).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 143, "SIGTERM");
    rt.stop_container(StopContainerRequest {
        container_id: l.clone(),
        timeout: 5,
    })
    .await
    .expect("stop twice");

    // Removal leaves nothing: no container, no rootfs mount, no bundle.
    for id in [&c, &l] {
        rt.remove_container(RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .expect("remove");
        let err = rt
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .expect_err("gone");
        assert_eq!(err.code(), Code::NotFound);
        let rootfs = s.d.dir.path().join("run/rootfs").join(id);
        assert!(!rootfs.exists(), "rootfs gone");
        assert!(
            !s.d.dir.path().join("run/shims").join(id).exists(),
            "bundle gone"
        );
    }
    rt.remove_container(RemoveContainerRequest {
        container_id: c.clone(),
    })
    .await
    .expect("remove twice");
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: p.clone(),
    })
    .await
    .expect("stop pod");
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: p })
        .await
        .expect("remove pod");
}

#[tokio::test]
async fn removing_a_pod_removes_its_containers() {
    let s = setup();
    let mut rt = s.d.runtime().await;
    let p = pod(&mut rt, "owner", &s.d.dir.path().join("logs")).await;
    pull(&s.d, &s.image).await;
    let c = create(
        &mut rt,
        &p,
        container("child", &s.image, &["sleep", "1000"]),
    )
    .await
    .expect("create");
    rt.start_container(StartContainerRequest {
        container_id: c.clone(),
    })
    .await
    .expect("start");
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: p.clone(),
    })
    .await
    .expect("stop pod");
    assert_eq!(
        status(&mut rt, &c).await.state,
        ContainerState::ContainerExited as i32
    );
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: p })
        .await
        .expect("remove pod");
    let left = rt
        .list_containers(ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn bad_container_requests_are_refused_and_leave_nothing() {
    let s = setup();
    let mut rt = s.d.runtime().await;
    let p = pod(&mut rt, "bad", &s.d.dir.path().join("logs")).await;
    pull(&s.d, &s.image).await;
    let err = create(&mut rt, "no-such-pod", container("x", &s.image, &["true"]))
        .await
        .expect_err("unknown pod");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = create(
        &mut rt,
        &p,
        container("x", "127.0.0.1:1/none:v1", &["true"]),
    )
    .await
    .expect_err("image not present");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut escape = container("x", &s.image, &["true"]);
    escape.log_path = "../../../etc/evil.log".into();
    let err = create(&mut rt, &p, escape).await.expect_err("log escape");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut relative = container("x", &s.image, &["true"]);
    relative.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: "relative/dir".into(),
        ..Default::default()
    }];
    let err = create(&mut rt, &p, relative)
        .await
        .expect_err("relative mount");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let left = rt
        .list_containers(ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert!(left.is_empty());
    let rootfs = s.d.dir.path().join("run/rootfs");
    assert_eq!(
        std::fs::read_dir(&rootfs).map(|d| d.count()).unwrap_or(0),
        0
    );
    let err = rt
        .container_status(ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    rt.stop_container(StopContainerRequest {
        container_id: "nope".into(),
        timeout: 1,
    })
    .await
    .expect("stop unknown is success");
    rt.remove_container(RemoveContainerRequest {
        container_id: "nope".into(),
    })
    .await
    .expect("remove unknown is success");
}
