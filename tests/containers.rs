//! Containers end to end, the seed example: a pod, an image pulled from a
//! real registry, a container created and started in the pod, its log,
//! its exit code, stop and removal; with real runc, CNI and berth-shim.

use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use berth_tests::image::{Compression, ImageBuilder, LayerBuilder};
use berth_tests::node::sh;
use berth_tests::node::{
    container_config, container_status, create_container, in_pod_pid_namespace, pod_config,
    run_pod, share_process_namespace, Node,
};
use berth_tests::registry::Registry;
use berth_tests::Daemon;
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

/// A node with its own network; `s.d` is its running berthd, `s.image`
/// the busybox image in its registry.
fn setup() -> Node {
    let mut n = Node::new("bc", "");
    n.d.spawn();
    n
}

async fn pod(rt: &mut RuntimeServiceClient<Channel>, name: &str, logs: &Path) -> String {
    run_pod(rt, pod_config(name, logs))
        .await
        .expect("RunPodSandbox")
}

fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    let mut c = container_config(name, image, command);
    c.labels = [("app".to_string(), name.to_string())].into();
    c
}

async fn create(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    config: ContainerConfig,
) -> Result<String, tonic::Status> {
    create_container(rt, pod, config).await
}

async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    container_status(rt, id).await.expect("ContainerStatus")
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

/// Stops and removes a pod (and so its containers), as kubelet does.
/// The bytes in ExecSync output files (`exec-*`) under `dir`, outside
/// mounts.
fn exec_output_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).map(|m| m.dev()).unwrap_or(0);
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() && m.dev() == dev {
                dirs.push(e.path());
            } else if m.is_file() && e.file_name().to_string_lossy().starts_with("exec-") {
                total += m.len();
            }
        }
    }
    total
}

async fn remove_pod(rt: &mut RuntimeServiceClient<Channel>, pod: &str) {
    berth_tests::node::remove_pod(rt, pod)
        .await
        .expect("stop and remove the pod");
}

async fn remove_image(d: &Daemon, image: &str) -> Result<(), tonic::Status> {
    d.images()
        .await
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        })
        .await
        .map(|_| ())
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
    let verbose = rt
        .container_status(ContainerStatusRequest {
            container_id: c.clone(),
            verbose: true,
        })
        .await
        .expect("verbose")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).expect("info json");
    assert_eq!(info["runtimeSpec"]["process"]["args"][0], "sh");
    // Made, not run: its process starts with StartContainer.
    assert_eq!(info["pid"].as_u64(), Some(0));
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

    // One that ends well: Completed.
    let ok = create(&mut rt, &p, container("ok", &s.image, &["true"]))
        .await
        .expect("create ok");
    rt.start_container(StartContainerRequest {
        container_id: ok.clone(),
    })
    .await
    .expect("start ok");
    let st = exited(&mut rt, &ok).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));
    rt.remove_container(RemoveContainerRequest { container_id: ok })
        .await
        .expect("remove ok");

    // A long-running one: stopped with its signal, exit code recorded. It
    // is PID 1 of its own PID namespace (kubelet's default), which the
    // kernel sends no signal it does not handle: it traps SIGTERM.
    let l = create(
        &mut rt,
        &p,
        container(
            "sleeper",
            &s.image,
            &[
                "sh",
                "-c",
                "trap 'echo got SIGTERM; exit 143' TERM; sleep 1000 & wait",
            ],
        ),
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
    let mut stream = rt
        .stream_containers(StreamContainersRequest { filter: None })
        .await
        .expect("StreamContainers")
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(msg) = stream.message().await.expect("stream") {
        streamed.extend(msg.containers.into_iter().map(|c| c.id));
    }
    streamed.sort();
    let mut both = vec![c.clone(), l.clone()];
    both.sort();
    assert_eq!(streamed, both);
    let mut pods = rt
        .stream_pod_sandboxes(StreamPodSandboxesRequest { filter: None })
        .await
        .expect("StreamPodSandboxes")
        .into_inner();
    let first = pods.message().await.expect("stream").expect("one message");
    assert_eq!(
        first
            .pod_sandboxes
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>(),
        vec![p.clone()]
    );
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
    // Output is capped so that the answer fits kubelet's 16 MiB messages;
    // the rest is read and dropped, and none of it reaches the disk, even
    // from a command that prints without end.
    let mut big = rt.clone().max_decoding_message_size(16 << 20);
    let out = big
        .exec_sync(exec(
            &["sh", "-c", "yes | head -c 50000000; echo done >&2"],
            30,
        ))
        .await
        .expect("exec printing 50 MB")
        .into_inner();
    assert_eq!(
        (out.stdout.len(), out.stderr.as_slice(), out.exit_code),
        ((16 << 20) - 4096 - 5, &b"done\n"[..], 0)
    );
    assert!(out.stdout.starts_with(b"y\ny\n"));
    let mut endless = rt.clone();
    let request = exec(&["yes"], 3);
    let call = tokio::spawn(async move { endless.exec_sync(request).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let written = exec_output_bytes(s.d.dir.path());
    assert!(written < 1 << 20, "{written} bytes of output on disk");
    let err = call.await.expect("join").expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");

    rt.stop_container(StopContainerRequest {
        container_id: l.clone(),
        timeout: 5,
    })
    .await
    .expect("stop");
    let st = status(&mut rt, &l).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 143, "SIGTERM");
    let log = std::fs::read_to_string(logs.join("sleeper/0.log")).expect("sleeper log");
    assert!(log.contains("got SIGTERM"), "{log}");
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
    remove_pod(&mut rt, &p).await;
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
    let mut negative = container("x", &s.image, &["true"]);
    negative.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            cpu_shares: -5,
            ..Default::default()
        }),
        security_context: None,
    });
    let err = create(&mut rt, &p, negative)
        .await
        .expect_err("negative cpu shares");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("cpu_shares"), "{err:?}");
    // A stopped pod takes no new container.
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: p.clone(),
    })
    .await
    .expect("stop pod");
    let err = create(&mut rt, &p, container("late", &s.image, &["true"]))
        .await
        .expect_err("stopped pod");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
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
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: p })
        .await
        .expect("remove pod");
}

/// Runs `sleep 1000` with `edit` applied to its config; answers its ID.
async fn running(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    image: &str,
    name: &str,
    edit: impl FnOnce(&mut ContainerConfig),
) -> String {
    let mut c = container(name, image, &["sleep", "1000"]);
    edit(&mut c);
    let id = create(rt, pod, c).await.expect("create");
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("start");
    id
}

fn security(
    edit: impl FnOnce(&mut LinuxContainerSecurityContext),
) -> impl FnOnce(&mut ContainerConfig) {
    move |c: &mut ContainerConfig| {
        let mut sc = LinuxContainerSecurityContext::default();
        edit(&mut sc);
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(sc),
            resources: None,
        });
    }
}

#[tokio::test]
async fn users_capabilities_and_the_security_context_hold_inside_the_container() {
    let s = setup();
    let mut rt = s.d.runtime().await;
    let mut config = pod_config("sec", &s.d.dir.path().join("logs"));
    share_process_namespace(&mut config);
    let p = run_pod(&mut rt, config).await.expect("RunPodSandbox");
    pull(&s.d, &s.image).await;

    // Users: the image's (root here), a uid, a name, supplemental groups.
    let root = running(&mut rt, &p, &s.image, "root", in_pod_pid_namespace).await;
    assert_eq!(sh(&mut rt, &root, "id -u").await.0, "0");
    let by_uid = running(
        &mut rt,
        &p,
        &s.image,
        "uid",
        security(|sc| {
            sc.run_as_user = Some(Int64Value { value: 1002 });
        }),
    )
    .await;
    assert_eq!(sh(&mut rt, &by_uid, "id -u; id -g").await.0, "1002\n1002");
    assert!(
        sh(&mut rt, &by_uid, "id -G")
            .await
            .0
            .split(' ')
            .any(|g| g == "1005"),
        "merged group"
    );
    let st = status(&mut rt, &by_uid).await;
    let user = st.user.and_then(|u| u.linux).expect("user");
    assert_eq!((user.uid, user.gid), (1002, 1002));
    assert!(user.supplemental_groups.contains(&1005));
    let strict = running(
        &mut rt,
        &p,
        &s.image,
        "strict",
        security(|sc| {
            sc.run_as_user = Some(Int64Value { value: 1002 });
            sc.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
        }),
    )
    .await;
    assert!(
        !sh(&mut rt, &strict, "id -G").await.0.contains("1005"),
        "strict: no image groups"
    );
    let by_name = running(
        &mut rt,
        &p,
        &s.image,
        "name",
        security(|sc| {
            sc.run_as_username = "www-data".into();
        }),
    )
    .await;
    assert_eq!(sh(&mut rt, &by_name, "id -u").await.0, "33");

    // Capabilities, no_new_privs, read-only rootfs, masked paths.
    let caps = running(
        &mut rt,
        &p,
        &s.image,
        "caps",
        security(|sc| {
            sc.capabilities = Some(Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["CHOWN".into()],
                ..Default::default()
            });
            sc.no_new_privs = true;
            sc.readonly_rootfs = true;
        }),
    )
    .await;
    let eff = sh(&mut rt, &caps, "grep CapEff /proc/self/status | cut -f2")
        .await
        .0;
    let eff = u64::from_str_radix(&eff, 16).expect("CapEff hex");
    assert!(eff & (1 << 12) != 0, "NET_ADMIN added: {eff:x}");
    assert!(eff & 1 == 0, "CHOWN dropped: {eff:x}");
    assert_eq!(
        sh(
            &mut rt,
            &caps,
            "grep NoNewPrivs /proc/self/status | cut -f2"
        )
        .await
        .0,
        "1"
    );
    assert_ne!(
        sh(&mut rt, &caps, "touch /written").await.1,
        0,
        "read-only rootfs"
    );
    // Masked: /dev/null is mounted over it.
    let mounts = sh(&mut rt, &root, "grep ' /proc' /proc/self/mountinfo")
        .await
        .0;
    assert!(mounts.contains(" /proc/keys "), "masked:\n{mounts}");
    assert_eq!(
        sh(&mut rt, &root, "touch /written && echo ok").await.0,
        "ok",
        "writable rootfs"
    );

    // Mounts and devices.
    let host = s.d.dir.path().join("shared");
    std::fs::create_dir_all(&host).expect("host dir");
    std::fs::write(host.join("from-host"), "hi").expect("write");
    let missing = s.d.dir.path().join("made/by/berth");
    let mounted = running(&mut rt, &p, &s.image, "mounts", |c| {
        c.mounts = vec![
            Mount {
                container_path: "/ro".into(),
                host_path: host.display().to_string(),
                readonly: true,
                ..Default::default()
            },
            Mount {
                container_path: "/rw".into(),
                host_path: missing.display().to_string(),
                propagation: MountPropagation::PropagationPrivate as i32,
                ..Default::default()
            },
        ];
        c.devices = vec![Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rwm".into(),
        }];
    })
    .await;
    assert_eq!(sh(&mut rt, &mounted, "cat /ro/from-host").await.0, "hi");
    assert_ne!(
        sh(&mut rt, &mounted, "touch /ro/x").await.1,
        0,
        "read-only mount"
    );
    assert_eq!(
        sh(&mut rt, &mounted, "touch /rw/x && echo ok").await.0,
        "ok"
    );
    assert!(
        missing.join("x").exists(),
        "a missing host path is made as a directory"
    );
    assert!(sh(&mut rt, &mounted, "ls -l /dev/mynull")
        .await
        .0
        .starts_with('c'));

    // One pod: shared localhost and PID namespace.
    let server = running(&mut rt, &p, &s.image, "server", |c| {
        in_pod_pid_namespace(c);
        c.command = vec![
            "sh".into(),
            "-c".into(),
            "while true; do nc -l -p 9000 -e echo pong; done".into(),
        ];
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sh(&mut rt, &root, "nc 127.0.0.1 9000 </dev/null").await.0,
        "pong"
    );
    assert!(
        sh(&mut rt, &root, "ps").await.0.contains("nc -l -p 9000"),
        "pod PID namespace"
    );
    let _ = server;

    remove_pod(&mut rt, &p).await;
}

#[tokio::test]
async fn log_rotation_loses_no_line_and_resources_update_live() {
    let s = setup();
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let p = pod(&mut rt, "rot", &logs).await;
    pull(&s.d, &s.image).await;
    let c = running(&mut rt, &p, &s.image, "ticker", |c| {
        c.command = vec![
            "sh".into(),
            "-c".into(),
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.01; done".into(),
        ];
    })
    .await;
    let log = logs.join("ticker/0.log");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = logs.join("ticker/0.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    rt.reopen_container_log(ReopenContainerLogRequest {
        container_id: c.clone(),
    })
    .await
    .expect("ReopenContainerLog");
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt.stop_container(StopContainerRequest {
        container_id: c.clone(),
        timeout: 2,
    })
    .await
    .expect("stop");
    let ticks = |p: &Path| -> Vec<u64> {
        std::fs::read_to_string(p)
            .expect("log")
            .lines()
            .filter_map(|l| l.rsplit_once("tick ").and_then(|(_, n)| n.parse().ok()))
            .collect()
    };
    let (old, new) = (ticks(&rotated), ticks(&log));
    assert!(!old.is_empty() && !new.is_empty(), "both files have lines");
    let all: Vec<u64> = old.iter().chain(new.iter()).copied().collect();
    assert!(
        all.windows(2).all(|w| w[1] == w[0] + 1),
        "no line lost: {all:?}"
    );

    // Live resources: the memory limit lands in the cgroup.
    let r = running(&mut rt, &p, &s.image, "limited", |_| {}).await;
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: r.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("UpdateContainerResources");
    let limit = sh(&mut rt, &r, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max").await.0;
    assert_eq!(limit, (64u64 << 20).to_string());
    let err = rt
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: c.clone(),
        })
        .await
        .expect_err("not running");
    assert_eq!(err.code(), Code::FailedPrecondition);
    remove_pod(&mut rt, &p).await;
}

/// ListContainerStats for the containers of pod `p`.
async fn pod_container_stats(
    rt: &mut RuntimeServiceClient<Channel>,
    p: &str,
) -> Vec<ContainerStats> {
    rt.list_container_stats(ListContainerStatsRequest {
        filter: Some(ContainerStatsFilter {
            pod_sandbox_id: p.to_string(),
            ..Default::default()
        }),
    })
    .await
    .expect("ListContainerStats")
    .into_inner()
    .stats
}

/// PodSandboxStats of pod `p`.
async fn pod_stats(rt: &mut RuntimeServiceClient<Channel>, p: &str) -> Option<PodSandboxStats> {
    rt.pod_sandbox_stats(PodSandboxStatsRequest {
        pod_sandbox_id: p.to_string(),
    })
    .await
    .expect("PodSandboxStats")
    .into_inner()
    .stats
}

#[tokio::test]
async fn stats_come_from_the_cgroups_and_an_oom_kill_is_reported() {
    let s = setup();
    let mut rt = s.d.runtime().await;
    let p = pod(&mut rt, "stats", &s.d.dir.path().join("logs")).await;
    pull(&s.d, &s.image).await;
    let c = running(&mut rt, &p, &s.image, "busy", |c| {
        c.command = vec![
            "sh".into(),
            "-c".into(),
            "echo data > /written; sleep 1000".into(),
        ];
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = rt
        .container_stats(ContainerStatsRequest {
            container_id: c.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let mem = st.memory.expect("memory");
    assert!(mem.usage_bytes.expect("usage").value > 0);
    assert!(mem.working_set_bytes.is_some());
    assert!(
        st.cpu
            .expect("cpu")
            .usage_core_nano_seconds
            .expect("cpu ns")
            .value
            > 0
    );
    let layer = st.writable_layer.expect("writable layer");
    assert!(
        layer.used_bytes.expect("bytes").value > 0,
        "the container wrote a file"
    );
    // Swap and pressure, exactly where this node's cgroups keep them: v1's
    // memory+swap accounting or v2's swap files; pressure files in the
    // cgroup2 tree (the whole of v2, or a hybrid node's beside v1).
    let cg = Path::new("/sys/fs/cgroup");
    let node_swap = cg.join("memory/memory.memsw.limit_in_bytes").exists()
        || std::fs::read_dir(cg)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("memory.swap.current").exists());
    let node_psi = cg.join("cpu.pressure").exists() || cg.join("unified/cpu.pressure").exists();
    let swap = st.swap.as_ref();
    assert_eq!(swap.is_some(), node_swap, "swap: {swap:?}");
    if let Some(swap) = swap {
        assert!(
            swap.swap_usage_bytes.is_some() && swap.timestamp > 0,
            "{swap:?}"
        );
    }
    let psi = st.cpu.as_ref().and_then(|c| c.psi.as_ref());
    assert_eq!(psi.is_some(), node_psi, "cpu pressure: {psi:?}");
    if let Some(psi) = psi {
        assert!(psi.some.is_some(), "{psi:?}");
    }
    assert_eq!(st.io.is_some(), node_psi, "io pressure: {:?}", st.io);
    let list = pod_container_stats(&mut rt, &p).await;
    assert_eq!(list.len(), 1);
    let linux = pod_stats(&mut rt, &p)
        .await
        .expect("pod stats")
        .linux
        .expect("linux");
    assert_eq!(linux.containers.len(), 1);
    // The pause process, the shell and its sleep.
    assert!(
        linux
            .process
            .expect("process")
            .process_count
            .expect("count")
            .value
            >= 2
    );

    // The pod's network, from its namespace.
    let net = pod_stats(&mut rt, &p)
        .await
        .and_then(|s| s.linux)
        .and_then(|l| l.network)
        .expect("the pod's network");
    assert_eq!(
        net.default_interface.as_ref().map(|i| i.name.as_str()),
        Some("eth0")
    );
    // The same readings as kubelet's cAdvisor metrics.
    let descriptors = rt
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .expect("ListMetricDescriptors")
        .into_inner()
        .descriptors;
    let keys = |name: &str| {
        descriptors
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.label_keys.len())
            .unwrap_or_else(|| panic!("no descriptor {name}"))
    };
    let metrics = rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    let mine = metrics
        .iter()
        .find(|m| m.pod_sandbox_id == p)
        .expect("the pod's metrics");
    let of_c = mine
        .container_metrics
        .iter()
        .find(|m| m.container_id == c)
        .expect("the container's metrics");
    let working_set = of_c
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .expect("working set");
    assert_eq!(working_set.label_values.len(), keys(&working_set.name));
    assert_eq!(working_set.label_values[0], "busy");
    assert!(working_set.value.as_ref().is_some_and(|v| v.value > 0));
    let named = |name: &str| of_c.metrics.iter().any(|m| m.name == name);
    assert_eq!(
        named("container_pressure_cpu_waiting_seconds_total"),
        node_psi
    );
    assert_eq!(named("container_memory_swap"), node_swap);
    let received = mine
        .metrics
        .iter()
        .find(|m| m.name == "container_network_receive_bytes_total")
        .expect("the pod's network metrics");
    assert_eq!(received.label_values.len(), keys(&received.name));
    assert_eq!(
        received.label_values.last().map(String::as_str),
        Some("eth0")
    );

    // CPU in nano-cores, from one reading to the next: a container that
    // spins uses about one core, one that sleeps next to nothing, and the
    // pod at least what its spinner does.
    let spinner = running(&mut rt, &p, &s.image, "spinner", |c| {
        c.command = vec!["sh".into(), "-c".into(), "while :; do :; done".into()];
    })
    .await;
    let nano_cores = |list: &[ContainerStats], id: &str| {
        list.iter()
            .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == id))
            .and_then(|s| s.cpu.as_ref())
            .and_then(|c| c.usage_nano_cores.as_ref())
            .map(|v| v.value)
    };
    let mut readings = Vec::new();
    for _ in 0..2 {
        let containers = pod_container_stats(&mut rt, &p).await;
        let pod = pod_stats(&mut rt, &p)
            .await
            .and_then(|s| s.linux)
            .and_then(|l| l.cpu)
            .and_then(|c| c.usage_nano_cores)
            .map(|v| v.value);
        readings.push((
            nano_cores(&containers, &spinner),
            nano_cores(&containers, &c),
            pod,
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (first, second) = (readings[0], readings[1]);
    assert_eq!(first.0, None, "no rate from one reading");
    let (spin, idle, pod) = (
        second.0.expect("the spinner's rate"),
        second.1.expect("the sleeper's rate"),
        second.2.expect("the pod's rate"),
    );
    assert!(
        (500_000_000..=1_100_000_000).contains(&spin),
        "spinner {spin}"
    );
    assert!(idle < 50_000_000, "sleeper {idle}");
    assert!(pod >= spin / 10 * 9, "pod {pod}, spinner {spin}");

    // Over its memory limit: OOMKilled.
    let hog = running(&mut rt, &p, &s.image, "hog", |c| {
        c.command = vec![
            "dd".into(),
            "if=/dev/zero".into(),
            "of=/dev/null".into(),
            "bs=64M".into(),
            "count=1".into(),
        ];
        c.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 16 << 20,
                memory_swap_limit_in_bytes: 16 << 20,
                ..Default::default()
            }),
            security_context: None,
        });
    })
    .await;
    let st = exited(&mut rt, &hog).await;
    assert_eq!(st.reason, "OOMKilled", "exit {}", st.exit_code);
    assert_eq!(st.exit_code, 137);
    remove_pod(&mut rt, &p).await;
}

/// A directory bind-mounted onto itself and made a shared mount; undone on
/// drop.
struct SharedMount(std::path::PathBuf);

impl SharedMount {
    fn new(dir: &Path) -> SharedMount {
        use nix::mount::{mount, MsFlags};
        std::fs::create_dir_all(dir).expect("mkdir");
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).expect("bind");
        let guard = SharedMount(dir.to_path_buf());
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .expect("make shared");
        guard
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0.join("later"), nix::mount::MntFlags::MNT_DETACH);
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn mount_propagation_modes_decide_what_later_host_mounts_reach() {
    let s = setup();
    let mut rt = s.d.runtime().await;
    let p = pod(&mut rt, "prop", &s.d.dir.path().join("logs")).await;
    pull(&s.d, &s.image).await;
    let host = s.d.dir.path().join("propagated");
    let shared = SharedMount::new(&host);
    std::fs::create_dir_all(host.join("later")).expect("mkdir");
    let mount = |path: &str, propagation: MountPropagation| Mount {
        container_path: path.into(),
        host_path: host.display().to_string(),
        propagation: propagation as i32,
        ..Default::default()
    };
    let c = running(&mut rt, &p, &s.image, "watcher", |c| {
        c.mounts = vec![
            mount("/private", MountPropagation::PropagationPrivate),
            mount("/slave", MountPropagation::PropagationHostToContainer),
            mount("/shared", MountPropagation::PropagationBidirectional),
        ];
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                privileged: false,
                ..Default::default()
            }),
            resources: None,
        });
    })
    .await;
    // A mount the host makes after the container started.
    nix::mount::mount(
        Some("tmpfs"),
        &host.join("later"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .expect("host mount");
    std::fs::write(host.join("later/marker"), "from the host\n").expect("marker");
    let (seen, _) = sh(
        &mut rt,
        &c,
        "for d in private slave shared; do cat /$d/later/marker 2>/dev/null || echo -; done",
    )
    .await;
    assert_eq!(
        seen, "-\nfrom the host\nfrom the host",
        "private, rslave, rshared"
    );
    drop(shared);
    remove_pod(&mut rt, &p).await;
}

#[tokio::test]
async fn a_debug_container_joins_its_targets_pid_namespace() {
    let s = setup();
    let mut rt = s.d.runtime().await;
    let p = pod(&mut rt, "target", &s.d.dir.path().join("logs")).await;
    pull(&s.d, &s.image).await;
    let pid_mode = |mode: NamespaceMode, target: &str| {
        let target = target.to_string();
        security(move |sc| {
            sc.namespace_options = Some(NamespaceOption {
                pid: mode as i32,
                target_id: target,
                ..Default::default()
            });
        })
    };
    let app = running(&mut rt, &p, &s.image, "app", |c| {
        c.command = vec!["sleep".into(), "4242".into()];
        pid_mode(NamespaceMode::Container, "")(c);
    })
    .await;
    let debug = running(
        &mut rt,
        &p,
        &s.image,
        "debug",
        pid_mode(NamespaceMode::Target, &app),
    )
    .await;
    let (ps, _) = sh(&mut rt, &debug, "ps").await;
    assert!(ps.contains("sleep 4242"), "the target's processes: {ps}");
    let err = create(&mut rt, &p, {
        let mut c = container("lost", &s.image, &["true"]);
        pid_mode(NamespaceMode::Target, "no-such-container")(&mut c);
        c
    })
    .await
    .expect_err("no target");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    remove_pod(&mut rt, &p).await;
}

#[tokio::test]
async fn no_new_privs_stops_a_privileged_binary_from_gaining_privileges() {
    let reg = Registry::start();
    // A `cat` that gains CAP_DAC_OVERRIDE when run (a file capability, the
    // same kind of privilege a setuid bit gives), and a root-only file.
    // vfs_cap_data revision 2, effective, permitted = 1 << CAP_DAC_OVERRIDE.
    let cap: [u8; 20] = [1, 0, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static");
    let img = ImageBuilder::new()
        .layer(LayerBuilder::new().busybox().build(Compression::Gzip))
        .layer(
            LayerBuilder::new()
                .file("caps/cat", &busybox, 0o755)
                .xattr("caps/cat", "security.capability", cap)
                .file_owned("etc/secret", "top secret\n", 0o600, 0, 0)
                .build(Compression::Gzip),
        )
        .env("PATH", "/bin")
        .build();
    reg.push_image("caps", Some("v1"), &img);
    let mut d = Daemon::configure(&format!(
        "[registries.\"{}\"]\ninsecure = true\n",
        reg.host()
    ));
    d.spawn();
    let mut rt = d.runtime().await;
    let image = reg.image_ref("caps", "v1");
    pull(&d, &image).await;
    let hostnet = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "nnp".into(),
            uid: "uid-nnp".into(),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(hostnet),
            runtime_handler: String::new(),
        })
        .await
        .expect("pod")
        .into_inner()
        .pod_sandbox_id;
    let as_app = |nnp: bool| {
        security(move |sc| {
            sc.run_as_user = Some(Int64Value { value: 1002 });
            sc.no_new_privs = nnp;
        })
    };
    let free = running(&mut rt, &p, &image, "free", as_app(false)).await;
    let bound = running(&mut rt, &p, &image, "bound", as_app(true)).await;
    assert_eq!(
        sh(&mut rt, &free, "/caps/cat /etc/secret").await.0,
        "top secret",
        "the capability works"
    );
    let (_, code) = sh(&mut rt, &bound, "/caps/cat /etc/secret").await;
    assert_ne!(code, 0, "no_new_privs: the file capability is not granted");
    remove_pod(&mut rt, &p).await;
}

#[tokio::test]
async fn an_image_removed_while_a_container_uses_it_keeps_the_container_running() {
    let s = setup();
    let mut rt = s.d.runtime().await;
    let p = pod(&mut rt, "inuse", &s.d.dir.path().join("logs")).await;
    pull(&s.d, &s.image).await;
    let c = running(&mut rt, &p, &s.image, "user", |_| {}).await;
    // As containerd does: the image goes, with all its names; the
    // container keeps its root filesystem and runs on.
    remove_image(&s.d, &s.image)
        .await
        .expect("RemoveImage of an image in use");
    let left = berth_tests::cri::status(&mut s.d.images().await, &s.image).await;
    assert!(left.is_none(), "the image is gone");
    assert_eq!(
        sh(&mut rt, &c, "cat /etc/passwd | head -1").await.0,
        "root:x:0:0:root:/root:/bin/sh"
    );
    assert_eq!(sh(&mut rt, &c, "echo still here").await.0, "still here");
    remove_pod(&mut rt, &p).await;
}

#[tokio::test]
async fn a_tty_container_logs_its_terminal_and_a_stdin_container_waits_for_input() {
    let s = setup();
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let p = pod(&mut rt, "ttys", &logs).await;
    pull(&s.d, &s.image).await;
    let tty = running(&mut rt, &p, &s.image, "term", |c| {
        c.command = vec!["sh".into(), "-c".into(), "tty; echo out; sleep 1000".into()];
        c.tty = true;
    })
    .await;
    let stdin = running(&mut rt, &p, &s.image, "reader", |c| {
        c.command = vec!["sh".into(), "-c".into(), "read line; echo got $line".into()];
        c.stdin = true;
    })
    .await;
    let log = logs.join("term/0.log");
    let mut text = String::new();
    for _ in 0..500 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(|l| l.trim_end().ends_with(" out")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" stdout ") && l.ends_with("/dev/pts/0")),
        "{text:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" stdout F ") && l.ends_with(" out")),
        "{text:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = status(&mut rt, &stdin).await;
    assert_eq!(
        st.state,
        ContainerState::ContainerRunning as i32,
        "the stdin reader saw end-of-file: {st:?}"
    );
    for id in [tty, stdin] {
        rt.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 2,
        })
        .await
        .expect("stop");
        assert_eq!(
            status(&mut rt, &id).await.state,
            ContainerState::ContainerExited as i32
        );
    }
    remove_pod(&mut rt, &p).await;
}

/// The shims berthd lists: container ID to (pid, bundle address).
async fn shims(d: &Daemon) -> std::collections::BTreeMap<String, (u32, String)> {
    d.admin()
        .await
        .list_shims(berth_protocol::admin::ListShimsRequest {})
        .await
        .expect("ListShims")
        .into_inner()
        .shims
        .into_iter()
        .map(|s| (s.container_id, (s.pid, s.address)))
        .collect()
}

#[tokio::test]
async fn a_remove_that_answered_left_no_shim_and_no_bundle() {
    let n = setup();
    n.pull().await;
    let mut rt = n.d.runtime().await;
    let pod = pod(&mut rt, "gone", &n.logs()).await;
    let id = create(
        &mut rt,
        &pod,
        container("gone", &n.image, &["sleep", "3600"]),
    )
    .await
    .expect("create");
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("start");
    let (pid, address) = shims(&n.d).await.remove(&id).expect("its shim is listed");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the shim runs");
    // Sockets are in <state>/s, bundles in <state>/shims/<id>.
    let state = Path::new(&address)
        .parent()
        .and_then(Path::parent)
        .expect("state dir");
    let bundle = state.join("shims").join(&id);
    assert!(
        bundle.exists(),
        "bundle {} before the removal",
        bundle.display()
    );
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("remove");
    // At once, not after a sweep: a crash right now must strand nothing.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    assert!(
        matches!(state, None | Some(Some('Z'))),
        "shim {pid} still runs after RemoveContainer answered: {stat}"
    );
    assert!(
        !bundle.exists(),
        "bundle {} is still there",
        bundle.display()
    );
    assert!(!shims(&n.d).await.contains_key(&id));
    remove_pod(&mut rt, &pod).await;
    n.assert_consistent();
    assert!(
        !n.d.log().contains("no record owns"),
        "the sweep found leftovers:\n{}",
        n.d.log()
    );
}

#[tokio::test]
async fn exec_sync_calls_beyond_the_node_bound_wait_their_turn() {
    let n = Node::running("xs", "[daemon]\nmax_exec_sync = 2\n").await;
    let mut rt = n.d.runtime().await;
    let pod = run_pod(&mut rt, pod_config("exec-bound", &n.logs()))
        .await
        .expect("pod");
    let c = create_container(
        &mut rt,
        &pod,
        container_config("c", &n.image, &["sleep", "1000"]),
    )
    .await
    .expect("create");
    berth_tests::node::start_container(&mut rt, &c)
        .await
        .expect("start");
    let exec = |cmd: &[&str], timeout: i64| ExecSyncRequest {
        container_id: c.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    };
    // Two long calls hold both turns.
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let mut rt = rt.clone();
            let req = exec(&["sleep", "3"], 10);
            tokio::spawn(async move { rt.exec_sync(req).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A call that may not wait as long as they run gets no turn...
    let t = std::time::Instant::now();
    let err = rt
        .exec_sync(exec(&["echo", "hi"], 1))
        .await
        .expect_err("no turn");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_exec_sync"), "{err:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // ...and one that may wait gets the first turn that ends.
    let out = rt
        .exec_sync(exec(&["echo", "hi"], 8))
        .await
        .expect("a turn")
        .into_inner();
    assert_eq!((out.stdout.as_slice(), out.exit_code), (&b"hi\n"[..], 0));
    for b in busy {
        let out = b.await.expect("join").expect("a busy call").into_inner();
        assert_eq!(out.exit_code, 0);
    }
    berth_tests::node::remove_pod(&mut rt, &pod)
        .await
        .expect("remove");
    n.assert_consistent();
}

#[tokio::test]
async fn pod_level_resources_reach_the_pods_own_cgroup() {
    let n = Node::running("pr", "").await;
    let mut rt = n.d.runtime().await;
    // A pod in a cgroup of its own, as kubelet places pods.
    let parent = format!("{}/podresize", n.cgroup_parent);
    let mut config = pod_config("resized", &n.logs());
    config
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = parent.clone();
    let p = run_pod(&mut rt, config).await.expect("RunPodSandbox");
    let limits = |memory: i64| LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: memory,
        ..Default::default()
    };
    rt.update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: p.clone(),
        overhead: Some(LinuxContainerResources {
            memory_limit_in_bytes: 1 << 20,
            ..Default::default()
        }),
        resources: Some(limits(256 << 20)),
    })
    .await
    .expect("UpdatePodSandboxResources");
    let cgroup = |controller: &str, file: &str| {
        let v1 = format!("/sys/fs/cgroup/{controller}{parent}/{file}");
        std::fs::read_to_string(&v1)
            .unwrap_or_else(|e| panic!("{v1}: {e}"))
            .trim()
            .to_string()
    };
    if berth_actors::host::cgroup_unified() {
        let v2 = |file: &str| {
            std::fs::read_to_string(format!("/sys/fs/cgroup{parent}/{file}"))
                .expect(file)
                .trim()
                .to_string()
        };
        assert_eq!(v2("memory.max"), ((257u64) << 20).to_string());
        assert_eq!(v2("cpu.max"), "50000 100000");
    } else {
        assert_eq!(
            cgroup("memory", "memory.limit_in_bytes"),
            ((257u64) << 20).to_string(),
            "the pod's limit with its overhead"
        );
        assert_eq!(cgroup("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(cgroup("cpu", "cpu.shares"), "512");
    }

    // Bad values and unknown pods are refused, and change nothing.
    let err = rt
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: p.clone(),
            overhead: None,
            resources: Some(LinuxContainerResources {
                cpu_period: 1,
                ..limits(128 << 20)
            }),
        })
        .await
        .expect_err("cpu_period 1");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("resources"), "{err:?}");
    let err = rt
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "0123456789ab".into(),
            overhead: None,
            resources: Some(limits(128 << 20)),
        })
        .await
        .expect_err("no such pod");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    if !berth_actors::host::cgroup_unified() {
        assert_eq!(
            cgroup("memory", "memory.limit_in_bytes"),
            ((257u64) << 20).to_string()
        );
    }

    // A pod under berth's shared parent has no cgroup of its own: its
    // resources are recorded, the shared parent is left alone.
    let shared = run_pod(&mut rt, pod_config("shared", &n.logs()))
        .await
        .expect("RunPodSandbox");
    let shared_limit = || {
        std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory{}/memory.limit_in_bytes",
            n.cgroup_parent
        ))
        .ok()
    };
    let before = shared_limit();
    rt.update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: shared.clone(),
        overhead: None,
        resources: Some(limits(64 << 20)),
    })
    .await
    .expect("recorded");
    let after = shared_limit();
    assert_eq!(before, after);
    for id in [p, shared] {
        remove_pod(&mut rt, &id).await;
    }
    n.assert_consistent();
}

/// An image volume as kubelet asks for it: no host path, the image by
/// name, optionally a sub-path.
fn image_volume(container_path: &str, image: &str, sub_path: &str) -> Mount {
    Mount {
        container_path: container_path.into(),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        readonly: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn an_image_volume_mounts_an_images_files_read_only_and_holds_the_image() {
    let mut s = setup();
    let mut rt = s.d.runtime().await;
    let p = pod(&mut rt, "imgvol", &s.d.dir.path().join("logs")).await;
    pull(&s.d, &s.image).await;
    // A data image of two layers: the second replaces a file of the
    // first, and an absolute link points into the image.
    let data = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("model/weights", "v1", 0o644)
                .file("model/notes", "first", 0o644)
                .build(Compression::Gzip),
        )
        .layer(
            LayerBuilder::new()
                .file("model/weights", "v2", 0o644)
                .symlink("latest", "/model")
                .build(Compression::Gzip),
        )
        .build();
    s.registry.push_image("data", Some("1"), &data);
    let data_ref = format!("{}/data:1", s.registry.host());
    pull(&s.d, &data_ref).await;

    // Missing image, missing sub-path, escaping sub-path: refused by
    // field, and nothing is left mounted.
    let cases = [
        (
            image_volume("/v", &format!("{}/absent:1", s.registry.host()), ""),
            Code::NotFound,
            "mounts[0].image",
        ),
        (
            image_volume("/v", &data_ref, "model/nothing"),
            Code::NotFound,
            "mounts[0].image_sub_path",
        ),
        (
            image_volume("/v", &data_ref, "../../etc"),
            Code::InvalidArgument,
            "mounts[0].image_sub_path",
        ),
    ];
    for (i, (mount, code, field)) in cases.into_iter().enumerate() {
        let mut c = container(&format!("bad{i}"), &s.image, &["true"]);
        c.mounts = vec![mount];
        let err = create(&mut rt, &p, c).await.expect_err("refused");
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(field), "{field}: {err:?}");
    }
    let rootfs = s.d.dir.path().join("run/rootfs");
    assert_eq!(
        std::fs::read_dir(&rootfs).map(|d| d.count()).unwrap_or(0),
        0,
        "a refused image volume leaves no mount"
    );

    let c = running(&mut rt, &p, &s.image, "reader", |c| {
        c.mounts = vec![
            image_volume("/data", &data_ref, ""),
            image_volume("/current", &data_ref, "latest"),
        ];
    })
    .await;
    assert_eq!(sh(&mut rt, &c, "cat /data/model/weights").await.0, "v2");
    assert_eq!(sh(&mut rt, &c, "cat /current/notes").await.0, "first");
    assert_ne!(
        sh(&mut rt, &c, "touch /data/model/x").await.1,
        0,
        "an image volume is read-only"
    );
    let st = status(&mut rt, &c).await;
    let shown: Vec<(String, String)> = st
        .mounts
        .iter()
        .filter_map(|m| {
            m.image
                .as_ref()
                .map(|i| (i.image.clone(), m.image_sub_path.clone()))
        })
        .collect();
    assert_eq!(
        shown,
        [
            (data_ref.clone(), String::new()),
            (data_ref.clone(), "latest".to_string())
        ]
    );

    // The image is in use while mounted.
    let err = remove_image(&s.d, &data_ref)
        .await
        .expect_err("in use as a volume");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&c), "names the container: {err:?}");

    // A crash of berthd keeps the volumes: the container reads on.
    s.d.kill9();
    s.d.spawn();
    let mut rt = s.d.runtime().await;
    assert_eq!(sh(&mut rt, &c, "cat /data/model/weights").await.0, "v2");
    s.assert_consistent();

    // Removing the container unmounts its volumes and frees the image.
    rt.stop_container(StopContainerRequest {
        container_id: c.clone(),
        timeout: 0,
    })
    .await
    .expect("stop");
    rt.remove_container(RemoveContainerRequest {
        container_id: c.clone(),
    })
    .await
    .expect("remove");
    assert_eq!(
        std::fs::read_dir(&rootfs).map(|d| d.count()).unwrap_or(0),
        0,
        "no volume left mounted"
    );
    remove_image(&s.d, &data_ref)
        .await
        .expect("RemoveImage once unmounted");
    remove_pod(&mut rt, &p).await;
    s.assert_consistent();
}

/// Whether crun can make containers on this node: crun 1.8 refuses a
/// hybrid cgroup layout whose cgroup2 hierarchy holds controllers.
fn crun_works_here() -> bool {
    let unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    !std::fs::read_to_string(unified).is_ok_and(|c| !c.trim().is_empty())
}

#[tokio::test]
async fn crun_runs_pods_where_it_can_and_an_unusable_runtime_is_reported_not_used() {
    let mut s = Node::new(
        "cr",
        "[runtimes.crun]\nbinary = \"crun\"\n[runtimes.ghost]\nbinary = \"/nonexistent/ghost-runtime\"\n",
    );
    s.d.spawn();
    let mut rt = s.d.runtime().await;
    // The runtimes are tried in the background once berthd serves.
    let node = berth_tests::eventually(Duration::from_secs(10), "the runtimes tried", || {
        let mut rt = rt.clone();
        async move {
            let node = rt
                .status(StatusRequest { verbose: false })
                .await
                .expect("Status")
                .into_inner();
            let conditions = &node.status.as_ref()?.conditions;
            conditions
                .iter()
                .any(|c| c.r#type == "RuntimeHandlerReady/ghost")
                .then_some(node)
        }
    })
    .await;
    let handlers: Vec<String> = node
        .runtime_handlers
        .iter()
        .map(|h| h.name.clone())
        .collect();
    let conditions = node.status.expect("status").conditions;
    let reported = |name: &str| {
        conditions
            .iter()
            .find(|c| c.r#type == format!("RuntimeHandlerReady/{name}"))
            .cloned()
    };
    assert!(!handlers.contains(&"ghost".to_string()), "{handlers:?}");
    let ghost = reported("ghost").expect("the unusable handler's condition");
    assert!(!ghost.status);
    assert!(
        ghost
            .message
            .contains("/nonexistent/ghost-runtime: not found"),
        "{ghost:?}"
    );
    assert!(
        conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status),
        "{conditions:?}"
    );
    let logs = s.d.dir.path().join("logs");
    let refused = |handler: &'static str, why: &'static str| {
        let mut rt = rt.clone();
        let config = pod_config(&format!("{handler}-refused"), &logs);
        async move {
            let err = rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: handler.into(),
                })
                .await
                .expect_err("an unusable handler");
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
            assert!(err.message().contains(why), "{err:?}");
        }
    };
    refused("ghost", "not found").await;
    if !crun_works_here() {
        // Said once at start-up, with crun's own words, not at each pod.
        assert!(!handlers.contains(&"crun".to_string()), "{handlers:?}");
        let crun = reported("crun").expect("crun's condition");
        assert!(crun.message.contains("hybrid"), "{crun:?}");
        refused("crun", "hybrid").await;
        s.assert_consistent();
        return;
    }

    // crun runs the pod and its container, exec included.
    assert!(handlers.contains(&"crun".to_string()), "{handlers:?}");
    s.pull().await;
    let p = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("crunpod", &logs)),
            runtime_handler: "crun".into(),
        })
        .await
        .expect("RunPodSandbox under crun")
        .into_inner()
        .pod_sandbox_id;
    let c = running(&mut rt, &p, &s.image, "app", |c| {
        c.command = vec![
            "sh".into(),
            "-c".into(),
            "echo from-crun; sleep 1000".into(),
        ];
    })
    .await;
    let crun_root = s.d.dir.path().join("run/crun");
    assert!(crun_root.join(&c).is_dir(), "crun holds the container");
    assert!(crun_root.join(&p).is_dir(), "crun holds the pod");
    assert_eq!(sh(&mut rt, &c, "echo $((6 * 7))").await.0, "42");
    rt.stop_container(StopContainerRequest {
        container_id: c.clone(),
        timeout: 2,
    })
    .await
    .expect("stop");
    let st = status(&mut rt, &c).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    let log = std::fs::read_to_string(&st.log_path).expect("log");
    assert!(log.contains("stdout F from-crun"), "{log}");
    remove_pod(&mut rt, &p).await;
    assert!(!crun_root.join(&c).exists(), "crun forgot the container");
    s.assert_consistent();
}

#[tokio::test]
async fn an_exited_containers_runtime_state_goes_at_its_exit_and_removal_still_works() {
    let s = setup();
    s.pull().await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let p = pod(&mut rt, "reaped", &logs).await;
    let c = create(
        &mut rt,
        &p,
        container("quick", &s.image, &["sh", "-c", "echo bye; exit 3"]),
    )
    .await
    .expect("create");
    berth_tests::node::start_container(&mut rt, &c)
        .await
        .expect("start");
    let st = exited(&mut rt, &c).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));
    // runc forgets it once the exit is recorded, as containerd deletes a
    // task at its exit; berth still knows how it ended.
    let runc_state = s.d.dir.path().join("run/runc").join(&c);
    berth_tests::eventually(Duration::from_secs(5), "runc to forget it", || {
        let gone = !runc_state.exists();
        async move { gone.then_some(()) }
    })
    .await;
    let st = status(&mut rt, &c).await;
    assert_eq!(
        (st.state, st.exit_code),
        (ContainerState::ContainerExited as i32, 3)
    );
    let log = std::fs::read_to_string(&st.log_path).expect("log");
    assert!(log.contains("stdout F bye"), "{log}");
    rt.remove_container(RemoveContainerRequest {
        container_id: c.clone(),
    })
    .await
    .expect("remove");
    // A stop answers once the runtime's container is gone too.
    let long = create(&mut rt, &p, container("long", &s.image, &["sleep", "1000"]))
        .await
        .expect("create");
    berth_tests::node::start_container(&mut rt, &long)
        .await
        .expect("start");
    rt.stop_container(StopContainerRequest {
        container_id: long.clone(),
        timeout: 1,
    })
    .await
    .expect("stop");
    assert!(!s.d.dir.path().join("run/runc").join(&long).exists());
    assert_eq!(status(&mut rt, &long).await.exit_code, 137);
    remove_pod(&mut rt, &p).await;
    s.assert_consistent();
}
