//! Crash recovery end to end, with real runc, CNI plugins and berth-shim:
//! berthd killed with SIGKILL while containers run, exit and are made;
//! shims killed; a reboot (the state directory emptied); leftovers nobody
//! owns. After each, every pod and container is as it really is, and the
//! consistency check (`berthctl fsck`) finds nothing leaked or missing.

use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use berth_tests::eventually;
use berth_tests::node::*;
use std::time::Duration;
use tonic::transport::Channel;

fn alive(pid: u32) -> bool {
    pid != 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
}

async fn exited(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    eventually(
        Duration::from_secs(10),
        "the container to be reported exited",
        || {
            let mut rt = rt.clone();
            let id = id.to_string();
            async move {
                let s = container_status(&mut rt, &id).await.ok()?;
                (s.state == ContainerState::ContainerExited as i32).then_some(s)
            }
        },
    )
    .await
}

/// A pod with one started container running `command`.
async fn pod_with(
    n: &Node,
    rt: &mut RuntimeServiceClient<Channel>,
    name: &str,
    command: &[&str],
) -> (String, String) {
    let pod = run_pod(rt, pod_config(name, &n.logs()))
        .await
        .expect("RunPodSandbox");
    let ctr = create_container(rt, &pod, container_config(name, &n.image, command))
        .await
        .expect("CreateContainer");
    start_container(rt, &ctr).await.expect("StartContainer");
    (pod, ctr)
}

/// The shim pid of a task, from `berthctl shims`.
fn shim_pid(n: &Node, id: &str) -> u32 {
    let out = n.d.berthctl(&["shims"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(&id[..12]))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn containers_outlive_a_crash_and_one_that_exited_meanwhile_reports_its_code() {
    let mut n = Node::running("rc", "").await;
    let mut rt = n.d.runtime().await;
    let (pod, long) = pod_with(&n, &mut rt, "long", &["sleep", "1000"]).await;
    let short = create_container(
        &mut rt,
        &pod,
        container_config(
            "short",
            &n.image,
            &["sh", "-c", "read x < /dev/null; sleep 1; exit 7"],
        ),
    )
    .await
    .expect("CreateContainer");
    start_container(&mut rt, &short)
        .await
        .expect("StartContainer");
    let pid = container_pid(&mut rt, &long).await;
    assert!(alive(pid), "the long container runs (pid {pid})");

    n.d.kill9();
    // `short` exits while berthd is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    n.d.spawn();
    let mut rt = n.d.runtime().await;

    let s = container_status(&mut rt, &short).await.expect("status");
    assert_eq!(s.state, ContainerState::ContainerExited as i32, "{s:?}");
    assert_eq!(s.exit_code, 7, "{s:?}");
    assert_eq!(s.reason, "Error");
    assert!(s.finished_at > s.started_at, "{s:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64;
    assert!(
        now - s.finished_at > 300_000_000,
        "the exit time is when it exited, not now: {s:?}"
    );

    let l = container_status(&mut rt, &long).await.expect("status");
    assert_eq!(l.state, ContainerState::ContainerRunning as i32, "{l:?}");
    assert_eq!(
        container_pid(&mut rt, &long).await,
        pid,
        "same PID after the crash"
    );
    assert!(alive(pid));
    let p = pod_status(&mut rt, &pod).await.expect("pod status");
    assert_eq!(p.state, PodSandboxState::SandboxReady as i32);
    n.assert_consistent();

    // The reconnected shim still serves: stop works and reports the kill.
    rt.stop_container(StopContainerRequest {
        container_id: long.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    assert!(!alive(pid));
    remove_pod(&mut rt, &pod).await.expect("remove pod");
    n.assert_consistent();
}

#[tokio::test]
async fn a_killed_shim_leaves_its_container_exited_with_a_reason_and_nothing_behind() {
    let n = Node::running("rs", "").await;
    let mut rt = n.d.runtime().await;
    let (pod, ctr) = pod_with(&n, &mut rt, "victim", &["sleep", "1000"]).await;
    let pid = container_pid(&mut rt, &ctr).await;
    let shim = shim_pid(&n, &ctr);
    assert!(
        alive(shim) && alive(pid),
        "shim {shim} and container {pid} run"
    );

    berth_tests::signal(shim, libc::SIGKILL);
    let s = exited(&mut rt, &ctr).await;
    assert_eq!(s.exit_code, 255, "{s:?}");
    assert!(s.message.contains("shim died"), "a clear reason: {s:?}");
    assert!(!alive(pid), "the container did not outlive its shim");
    // The pod's pause runs on under its own shim.
    let p = pod_status(&mut rt, &pod).await.expect("pod status");
    assert_eq!(p.state, PodSandboxState::SandboxReady as i32);
    n.assert_consistent();

    // Removal cleans up what the dead shim left: runtime state, bundle,
    // rootfs.
    remove_container(&mut rt, &ctr)
        .await
        .expect("RemoveContainer");
    n.assert_consistent();
    remove_pod(&mut rt, &pod).await.expect("remove pod");
    n.assert_consistent();
}

#[tokio::test]
async fn after_a_reboot_pods_are_not_ready_containers_exited_and_removal_cleans_up() {
    let mut n = Node::running("rb", "").await;
    let mut rt = n.d.runtime().await;
    let (pod, ctr) = pod_with(&n, &mut rt, "rebooted", &["sleep", "1000"]).await;

    // A reboot, as far as berth can tell: every process gone, the volatile
    // state directory empty, the journal on disk kept.
    n.d.kill9();
    berth_tests::reap(n.d.dir.path());
    // The killed processes leave their cgroups once they are gone.
    eventually(
        Duration::from_secs(5),
        "the node's cgroups to go",
        || async {
            remove_cgroups(&n.cgroup_parent);
            let left = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"].iter().any(|h| {
                std::path::Path::new(h)
                    .join(n.cgroup_parent.trim_start_matches('/'))
                    .is_dir()
            });
            (!left).then_some(())
        },
    )
    .await;
    let state = n.d.dir.path().join("run");
    let runc_root = state.join("runc");
    std::fs::remove_dir_all(&state).expect("empty the state directory");
    let _ = std::fs::remove_dir_all(&runc_root);
    n.d.spawn();
    let mut rt = n.d.runtime().await;

    let p = pod_status(&mut rt, &pod).await.expect("pod status");
    assert_eq!(p.state, PodSandboxState::SandboxNotready as i32, "{p:?}");
    let c = container_status(&mut rt, &ctr)
        .await
        .expect("container status");
    assert_eq!(c.state, ContainerState::ContainerExited as i32, "{c:?}");
    assert_eq!(c.exit_code, 255, "{c:?}");
    let report = String::from_utf8_lossy(&n.d.berthctl(&["recovery"]).stdout).to_string();
    assert!(
        report.contains(&format!("shim of {}", &ctr[..12])),
        "{report}"
    );

    // kubelet removes and recreates them; nothing of the old ones stays.
    remove_pod(&mut rt, &pod).await.expect("remove pod");
    n.assert_consistent();
    let ips = std::fs::read_dir(n.d.dir.path().join("ipam/node"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(ips, 0, "the pod's IP was released");
    let (pod2, ctr2) = pod_with(&n, &mut rt, "rebooted", &["sleep", "1000"]).await;
    assert_ne!(pod2, pod);
    assert!(alive(container_pid(&mut rt, &ctr2).await));
    remove_pod(&mut rt, &pod2).await.expect("remove pod");
    n.assert_consistent();
}

#[tokio::test]
async fn leftovers_no_record_owns_are_removed_at_start() {
    let mut n = Node::running("rl", "").await;
    n.d.kill9();
    let state = n.d.dir.path().join("run");
    let stray = "ab".repeat(32);
    // A pinned network namespace, a mounted root filesystem and a shim
    // bundle, all of a pod berth never recorded.
    let pin = state.join("netns").join(&stray);
    std::fs::create_dir_all(pin.parent().expect("netns dir")).expect("netns dir");
    std::fs::write(&pin, "").expect("pin file");
    let unshare = std::process::Command::new("unshare")
        .arg(format!("--net={}", pin.display()))
        .arg("true")
        .status()
        .expect("unshare");
    assert!(unshare.success());
    let target = state.join("rootfs").join(&stray);
    std::fs::create_dir_all(&target).expect("rootfs dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "stray"])
        .arg(&target)
        .status()
        .expect("mount");
    assert!(mounted.success());
    let bundle = state.join("shims").join(&stray);
    std::fs::create_dir_all(&bundle).expect("bundle");
    std::fs::write(bundle.join("config.json"), "{}").expect("bundle file");

    n.d.spawn();
    let report = String::from_utf8_lossy(&n.d.berthctl(&["recovery"]).stdout).to_string();
    assert!(report.contains("no allocation, removed"), "{report}");
    assert!(report.contains("no rootfs record, removed"), "{report}");
    assert!(report.contains("no record, removed"), "{report}");
    assert!(!pin.exists() && !target.exists() && !bundle.exists());
    n.assert_consistent();
}

#[tokio::test]
async fn fsck_reports_what_leaked_while_berthd_was_not_looking() {
    let mut n = Node::new("rf", "");
    n.d.spawn();
    n.assert_consistent();
    // A pod cgroup no pod owns (as a runtime killed mid-create leaves).
    let hierarchy = if std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
        "/sys/fs/cgroup/memory"
    } else {
        "/sys/fs/cgroup"
    };
    let leaked = std::path::Path::new(hierarchy)
        .join(n.cgroup_parent.trim_start_matches('/'))
        .join("cd".repeat(32));
    std::fs::create_dir_all(&leaked).expect("cgroup");
    let (ok, report) = n.fsck();
    assert!(!ok, "fsck exits 1 on a finding");
    assert!(
        report.contains("leaked") && report.contains(&"cd".repeat(32)),
        "{report}"
    );
    std::fs::remove_dir(&leaked).expect("rmdir");
    n.assert_consistent();
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq)]
struct Failure(tonic::Code, String);

impl Failure {
    fn unavailable(&self) -> bool {
        self.0 == tonic::Code::Unavailable
    }

    /// The connection broke under the call: berthd died in the middle of
    /// it, and no runtime can answer then.
    fn server_died(&self) -> bool {
        self.0 == tonic::Code::Unknown && self.1 == "transport error"
    }
}

/// Retries `f` (a CRI call) until it succeeds, as kubelet would, for at
/// most a minute; every call must answer within 30 s. Answers the value
/// and the failures seen on the way.
async fn until_ok<T, F, Fut>(what: &str, mut f: F) -> (T, Vec<Failure>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), f()).await {
            Err(_) => panic!("{what}: a call hung for 30 s"),
            Ok(Ok(v)) => return (v, seen),
            Ok(Err(s)) => {
                seen.push(Failure(s.code(), s.message().to_string()));
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: still failing after a minute: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A client for `socket`; berthd being down (restarting) is UNAVAILABLE,
/// as gRPC clients see it.
async fn client(socket: &std::path::Path) -> Result<RuntimeServiceClient<Channel>, tonic::Status> {
    berth_protocol::uds::connect(socket)
        .await
        .map(RuntimeServiceClient::new)
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))
}

/// Makes pod `name` with one running `sleep` container the way kubelet
/// does: a failed RunPodSandbox is retried as a new attempt; a failed
/// create likewise. Answers the pod and container IDs.
async fn make_pod(
    socket: std::path::PathBuf,
    name: String,
    image: String,
    logs: std::path::PathBuf,
) -> (String, String, Vec<Failure>) {
    let mut attempt = 0;
    let (pod, mut codes) = until_ok(&format!("RunPodSandbox {name}"), || {
        let mut config = pod_config(&name, &logs);
        if let Some(m) = config.metadata.as_mut() {
            m.attempt = attempt;
        }
        attempt += 1;
        let socket = socket.clone();
        async move { run_pod(&mut client(&socket).await?, config).await }
    })
    .await;
    let mut attempt = 0;
    let (ctr, more) = until_ok(&format!("CreateContainer {name}"), || {
        let mut config = container_config(&name, &image, &["sleep", "1000"]);
        if let Some(m) = config.metadata.as_mut() {
            m.attempt = attempt;
        }
        attempt += 1;
        let (pod, socket) = (pod.clone(), socket.clone());
        async move { create_container(&mut client(&socket).await?, &pod, config).await }
    })
    .await;
    codes.extend(more);
    // As kubelet does, a start whose answer was lost (berthd killed after
    // it started the container) is seen done in the container's status.
    let (_, more) = until_ok(&format!("StartContainer {name}"), || {
        let (ctr, socket) = (ctr.clone(), socket.clone());
        async move {
            let mut rt = client(&socket).await?;
            match start_container(&mut rt, &ctr).await {
                Ok(()) => Ok(()),
                Err(e) => match container_status(&mut rt, &ctr).await {
                    Ok(s) if s.state == ContainerState::ContainerRunning as i32 => Ok(()),
                    _ => Err(e),
                },
            }
        }
    })
    .await;
    codes.extend(more);
    (pod, ctr, codes)
}

/// Every pod and container berthd reports is as the machine has it: a
/// ready pod's pause process and a running container's process are alive,
/// an exited container's is not.
async fn assert_true_to_life(rt: &mut RuntimeServiceClient<Channel>) {
    let pods = berth_tests::node::list_pods(rt).await;
    for p in &pods {
        let s = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: p.id.clone(),
                verbose: true,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let pid = s
            .info
            .get("info")
            .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
            .and_then(|v| v.get("pid").and_then(|p| p.as_u64()))
            .unwrap_or(0) as u32;
        if p.state == PodSandboxState::SandboxReady as i32 {
            assert!(
                alive(pid),
                "ready pod {} has no pause process ({pid})",
                p.id
            );
        }
    }
    let ctrs = rt
        .list_containers(ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    for c in &ctrs {
        let pid = container_pid(rt, &c.id).await;
        if c.state == ContainerState::ContainerRunning as i32 {
            assert!(
                alive(pid),
                "running container {} has no process ({pid})",
                c.id
            );
        }
    }
}

/// The PIDs of every running container.
async fn running_pids(rt: &mut RuntimeServiceClient<Channel>) -> Vec<(String, u32)> {
    let ctrs = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .map(|r| r.into_inner().containers)
        .unwrap_or_default();
    let mut out = Vec::new();
    for c in ctrs {
        out.push((c.id.clone(), container_pid(rt, &c.id).await));
    }
    out
}

/// Removes every pod (and so every container) berthd knows.
async fn remove_all(rt: &mut RuntimeServiceClient<Channel>) {
    let pods = berth_tests::node::list_pods(rt).await;
    for p in pods {
        let id = p.id.clone();
        until_ok("remove a pod", || {
            let mut rt = rt.clone();
            let id = id.clone();
            async move { remove_pod(&mut rt, &id).await }
        })
        .await;
    }
}

fn pseudo_random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_pods_made_while_berthd_is_killed_three_times_end_consistent() {
    let mut n = Node::running("rk", "").await;
    let workers: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(make_pod(
                n.d.cri_socket(),
                format!("chaos-{i}"),
                n.image.clone(),
                n.logs(),
            ))
        })
        .collect();
    let mut seed = std::process::id() as u64 | 1;
    let mut kept: Vec<(String, u32)> = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150 + pseudo_random(&mut seed) % 600)).await;
        let mut rt = n.d.runtime().await;
        kept.extend(running_pids(&mut rt).await);
        n.d.kill9();
        tokio::time::sleep(Duration::from_millis(100)).await;
        n.d.spawn();
    }
    let mut made = Vec::new();
    for w in workers {
        made.push(w.await.expect("worker"));
    }
    let failures: Vec<Failure> = made.iter().flat_map(|(_, _, f)| f.clone()).collect();
    let unexpected: Vec<_> = failures
        .iter()
        .filter(|f| !f.unavailable() && !f.server_died())
        .collect();
    assert!(
        unexpected.is_empty(),
        "calls during the crashes failed otherwise than UNAVAILABLE or a broken connection: {unexpected:?}"
    );
    println!("{} calls failed across 3 crashes", failures.len());
    let mut rt = n.d.runtime().await;
    for (pod, ctr, _) in &made {
        let p = pod_status(&mut rt, pod).await.expect("pod status");
        assert_eq!(p.state, PodSandboxState::SandboxReady as i32, "{pod}");
        let c = container_status(&mut rt, ctr)
            .await
            .expect("container status");
        assert_eq!(c.state, ContainerState::ContainerRunning as i32, "{ctr}");
    }
    for (id, pid) in &kept {
        assert_eq!(
            container_pid(&mut rt, id).await,
            *pid,
            "container {id} kept its PID"
        );
        assert!(alive(*pid), "container {id} still runs");
    }
    assert_true_to_life(&mut rt).await;
    n.assert_consistent();
    remove_all(&mut rt).await;
    n.assert_consistent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn actors_killed_under_load_fail_calls_only_as_unavailable_and_end_consistent() {
    let n = Node::running("ra", "").await;
    let mut admin = n.d.admin().await;
    let mut kills_before = 0;
    for mode in [
        berth_protocol::admin::KillMode::Stop,
        berth_protocol::admin::KillMode::Panic,
    ] {
        admin
            .start_chaos(berth_protocol::admin::StartChaosRequest {
                interval_ms: 300,
                actors: Vec::new(),
                mode: mode as i32,
            })
            .await
            .expect("start chaos");
        // Rounds until the load has run long enough for several kills,
        // however fast the calls are.
        let until = std::time::Instant::now() + Duration::from_secs(2);
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let (socket, image, logs) = (n.d.cri_socket(), n.image.clone(), n.logs());
                tokio::spawn(async move {
                    let mut codes = Vec::new();
                    for round in 0.. {
                        if round > 0 && std::time::Instant::now() > until {
                            break;
                        }
                        let name = format!("load-{}-{i}-{round}", mode as i32);
                        let (pod, ctr, more) =
                            make_pod(socket.clone(), name, image.clone(), logs.clone()).await;
                        codes.extend(more);
                        let (_, more) = until_ok("ContainerStatus", || {
                            let (ctr, socket) = (ctr.clone(), socket.clone());
                            async move { container_status(&mut client(&socket).await?, &ctr).await }
                        })
                        .await;
                        codes.extend(more);
                        let (_, more) = until_ok("StopContainer", || {
                            let (ctr, socket) = (ctr.clone(), socket.clone());
                            async move {
                                client(&socket)
                                    .await?
                                    .stop_container(StopContainerRequest {
                                        container_id: ctr,
                                        timeout: 1,
                                    })
                                    .await
                            }
                        })
                        .await;
                        codes.extend(more);
                        let (_, more) = until_ok("remove the pod", || {
                            let (pod, socket) = (pod.clone(), socket.clone());
                            async move { remove_pod(&mut client(&socket).await?, &pod).await }
                        })
                        .await;
                        codes.extend(more);
                    }
                    codes
                })
            })
            .collect();
        let mut codes = Vec::new();
        for w in workers {
            codes.extend(w.await.expect("worker"));
        }
        let chaos = admin
            .stop_chaos(berth_protocol::admin::StopChaosRequest {})
            .await
            .expect("stop chaos")
            .into_inner();
        assert!(
            chaos.kills >= kills_before + 3,
            "chaos killed actors: {chaos:?}"
        );
        let kills = chaos.kills - kills_before;
        kills_before = chaos.kills;
        let unexpected: Vec<_> = codes.iter().filter(|f| !f.unavailable()).collect();
        assert!(
            unexpected.is_empty(),
            "calls failed otherwise than UNAVAILABLE: {unexpected:?}"
        );
        println!(
            "{mode:?}: {kills} kills, {} calls failed UNAVAILABLE",
            codes.len()
        );
    }
    let mut rt = n.d.runtime().await;
    remove_all(&mut rt).await;
    assert_true_to_life(&mut rt).await;
    n.assert_consistent();
    let actors = String::from_utf8_lossy(&n.d.berthctl(&["actors"]).stdout).to_string();
    assert!(
        !actors.contains("crash-loop"),
        "chaos kills are not a crash loop:\n{actors}"
    );
}

/// The program `name` from PATH.
fn which(name: &str) -> String {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| panic!("{name} is not in PATH"))
}

/// Adds CNI plugin directories (searched first) to the node's berthd
/// configuration.
fn add_cni_bin_dir(n: &Node, dir: &std::path::Path) {
    let text = std::fs::read_to_string(&n.d.config).expect("config");
    let text = text.replacen(
        "[cni]\n",
        &format!(
            "[cni]\nbin_dirs = [\"{}\", \"/usr/lib/cni\"]\n",
            dir.display()
        ),
        1,
    );
    std::fs::write(&n.d.config, text).expect("config");
}

/// A wrapper that runs `real` with its arguments, unless `trigger`
/// exists and `when` (a shell condition) holds: then it removes the
/// trigger, starts `real` and kills it and itself with SIGKILL mid-way.
fn faulty(path: &std::path::Path, real: &str, trigger: &std::path::Path, when: &str) {
    let script = format!(
        "#!/bin/sh\nif [ -e {t} ] && {when}; then\n  rm -f {t}\n  {real} \"$@\" &\n  sleep 0.03\n  kill -9 $!\n  kill -9 $$\nfi\nexec {real} \"$@\"\n",
        t = trigger.display()
    );
    std::fs::write(path, script).expect("wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A pod named `name` under the runtime handler "faulty".
async fn faulty_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    n: &Node,
    name: &str,
) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(pod_config(name, &n.logs())),
        runtime_handler: "faulty".into(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

#[tokio::test]
async fn runc_or_a_cni_plugin_killed_mid_operation_fails_cleanly_and_a_retry_succeeds() {
    let tools = tempfile::tempdir().expect("tempdir");
    let runc_trigger = tools.path().join("kill-runc-create");
    let cni_trigger = tools.path().join("kill-cni-add");
    faulty(
        &tools.path().join("runc"),
        &which("runc"),
        &runc_trigger,
        "echo \" $* \" | grep -qE ' (create|run) '",
    );
    let plugins = tools.path().join("cni");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    faulty(
        &plugins.join("bridge"),
        "/usr/lib/cni/bridge",
        &cni_trigger,
        "[ \"$CNI_COMMAND\" = ADD ]",
    );
    let mut n = Node::new(
        "rz",
        &format!(
            "[runtimes.faulty]\nbinary = \"{}\"\n",
            tools.path().join("runc").display()
        ),
    );
    add_cni_bin_dir(&n, &plugins);
    n.d.spawn();
    n.pull().await;
    let mut rt = n.d.runtime().await;

    // The CNI plugin dies during ADD: the pod fails and leaves nothing.
    std::fs::write(&cni_trigger, "").expect("trigger");
    let e = faulty_pod(&mut rt, &n, "faulty")
        .await
        .expect_err("ADD was killed");
    assert!(!cni_trigger.exists(), "the fault fired");
    assert!(e.message().contains("bridge"), "names the plugin: {e:?}");
    n.assert_consistent();
    // runc dies while creating the pause container: likewise.
    std::fs::write(&runc_trigger, "").expect("trigger");
    let e = faulty_pod(&mut rt, &n, "faulty")
        .await
        .expect_err("runc create was killed");
    assert!(!runc_trigger.exists(), "the fault fired");
    n.assert_consistent();
    let pods = berth_tests::node::list_pods(&mut rt).await;
    assert!(pods.is_empty(), "no half-made pod: {pods:?} ({e:?})");

    // Retried, the pod is made; then runc dies running a container (at
    // StartContainer: CreateContainer only defines it).
    let pod = faulty_pod(&mut rt, &n, "faulty")
        .await
        .expect("RunPodSandbox retried");
    std::fs::write(&runc_trigger, "").expect("trigger");
    let config = container_config("app", &n.image, &["sleep", "1000"]);
    let ctr = create_container(&mut rt, &pod, config)
        .await
        .expect("CreateContainer");
    start_container(&mut rt, &ctr)
        .await
        .expect_err("runc run was killed");
    assert!(!runc_trigger.exists(), "the fault fired");
    n.assert_consistent();
    let status = container_status(&mut rt, &ctr).await.expect("status");
    assert_eq!(
        status.state,
        ContainerState::ContainerCreated as i32,
        "a failed start leaves it created"
    );
    start_container(&mut rt, &ctr)
        .await
        .expect("StartContainer retried");
    assert!(alive(container_pid(&mut rt, &ctr).await));
    remove_pod(&mut rt, &pod).await.expect("remove pod");
    n.assert_consistent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_with_a_hundred_running_containers_serves_again_quickly_and_keeps_them() {
    let mut n = Node::running("rh", "").await;
    let mut rt = n.d.runtime().await;
    let pod = run_pod(&mut rt, pod_config("hundred", &n.logs()))
        .await
        .expect("RunPodSandbox");
    let mut ids = Vec::new();
    for wave in 0..10 {
        let jobs: Vec<_> = (0..10)
            .map(|i| {
                let (mut rt, pod, image) = (rt.clone(), pod.clone(), n.image.clone());
                tokio::spawn(async move {
                    let name = format!("c{wave}-{i}");
                    let id = create_container(
                        &mut rt,
                        &pod,
                        container_config(&name, &image, &["sleep", "1000"]),
                    )
                    .await
                    .expect("CreateContainer");
                    start_container(&mut rt, &id).await.expect("StartContainer");
                    id
                })
            })
            .collect();
        for j in jobs {
            ids.push(j.await.expect("job"));
        }
    }
    let mut before = running_pids(&mut rt).await;
    assert_eq!(before.len(), 100);

    n.d.kill9();
    let t = std::time::Instant::now();
    n.d.spawn();
    let serving = t.elapsed();
    let mut rt = n.d.runtime().await;
    let mut after = running_pids(&mut rt).await;
    before.sort();
    after.sort();
    assert_eq!(after, before, "every container runs on with its PID");
    assert!(before.iter().all(|(_, pid)| alive(*pid)));
    let report = String::from_utf8_lossy(&n.d.berthctl(&["recovery"]).stdout).to_string();
    assert!(report.contains("101 live shims"), "{report}");
    println!("berthd served again {serving:?} after its start, with 100 running containers");
    assert!(serving < Duration::from_secs(10), "{serving:?}");
    remove_pod(&mut rt, &pod).await.expect("remove pod");
    n.assert_consistent();
}

#[tokio::test]
async fn an_unreadable_journal_record_is_quarantined_and_the_rest_recovers() {
    let mut n = Node::running("rq", "").await;
    let mut rt = n.d.runtime().await;
    let (pod, ctr) = pod_with(&n, &mut rt, "survivor", &["sleep", "1000"]).await;
    n.d.kill9();
    {
        use berth_actors::journal::{Journal, Kind, SledJournal};
        let j = SledJournal::open(&n.d.root().join("journal")).expect("journal");
        j.put(
            Kind::Container,
            &"ef".repeat(32),
            b"{\"v\":1,\"data\":{\"id\":7}}",
        )
        .expect("put a record no berthd can read");
    }
    n.d.spawn();
    let mut rt = n.d.runtime().await;
    let c = container_status(&mut rt, &ctr).await.expect("status");
    assert_eq!(c.state, ContainerState::ContainerRunning as i32);
    let stats = String::from_utf8_lossy(&n.d.berthctl(&["journal", "stats"]).stdout).to_string();
    assert!(
        stats
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["quarantine", "1"]),
        "{stats}"
    );
    assert!(n.d.log().contains("journal record quarantined"));
    remove_pod(&mut rt, &pod).await.expect("remove pod");
    n.assert_consistent();
}

#[tokio::test]
async fn chaos_mode_from_the_config_kills_only_the_actors_it_names() {
    let mut d = berth_tests::Daemon::configure(
        "[chaos]\nenabled = true\ninterval_ms = 100\nactors = [\"image\"]\nmode = \"panic\"\n",
    );
    d.spawn();
    let status = eventually(Duration::from_secs(10), "chaos kills", || async {
        let out = String::from_utf8_lossy(&d.berthctl(&["chaos", "status"]).stdout).to_string();
        let kills: u64 = out
            .split("; ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        (kills >= 3).then_some(out)
    })
    .await;
    assert!(
        status.contains("chaos running: every 100 ms among image"),
        "{status}"
    );
    assert!(status.contains(", the last of image"), "{status}");
    let stopped = String::from_utf8_lossy(&d.berthctl(&["chaos", "stop"]).stdout).to_string();
    assert!(stopped.starts_with("chaos stopped"), "{stopped}");
    let image = String::from_utf8_lossy(&d.berthctl(&["actor", "image"]).stdout).to_string();
    assert!(
        image.contains("injected by chaos mode"),
        "chaos, not an operator, is named:
{image}"
    );
    let actors = String::from_utf8_lossy(&d.berthctl(&["actors"]).stdout).to_string();
    for line in actors.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let restarts: u64 = cols[5].parse().expect("restarts column");
        if cols[0] == "image" {
            assert!(restarts >= 3, "{actors}");
        } else {
            assert_eq!(restarts, 0, "{actors}");
        }
    }
    assert!(
        !actors.contains("crash-loop"),
        "injected panics are no crash loop:\n{actors}"
    );
    // A schedule naming an unknown actor is refused.
    let bad = d.berthctl(&["chaos", "start", "--actors", "nope"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope"));
}

#[tokio::test]
async fn fsck_tells_its_own_leaked_ips_from_another_runtimes_in_a_shared_ipam_store() {
    let n = Node::running("ri", "").await;
    let mut rt = n.d.runtime().await;
    let pod = berth_tests::node::run_pod(
        &mut rt,
        berth_tests::node::pod_config("released", &n.logs()),
    )
    .await
    .expect("RunPodSandbox");
    berth_tests::node::remove_pod(&mut rt, &pod)
        .await
        .expect("remove the pod");
    n.assert_consistent();
    let store = n.d.dir.path().join("ipam").join("node");
    let prefix = n.subnet.trim_end_matches("0/24");
    // Another runtime's pod, sharing the store: not this berthd's business.
    std::fs::write(
        store.join(format!("{prefix}250")),
        format!("{}\neth0", "ab".repeat(32)),
    )
    .expect("another runtime's reservation");
    n.assert_consistent();
    // The pod this berthd removed, still holding an IP: a leak.
    std::fs::write(store.join(format!("{prefix}251")), format!("{pod}\neth0"))
        .expect("a leaked reservation");
    let (ok, report) = n.fsck();
    assert!(!ok, "fsck finds the leak: {report}");
    assert!(
        report.contains(&format!("{prefix}251")) && !report.contains(&format!("{prefix}250")),
        "{report}"
    );
    std::fs::remove_file(store.join(format!("{prefix}251"))).expect("rm");
    n.assert_consistent();
}

#[tokio::test]
async fn a_shim_killed_at_each_step_of_create_start_and_exec_fails_that_call_cleanly() {
    let tools = tempfile::tempdir().expect("tempdir");
    let t = tools.path();
    // The shim, killed (with the trigger there) as soon as it serves, so
    // that berthd's first call finds it dead.
    berth_tests::script(
        &t.join("berth-shim"),
        &format!(
            "{real} \"$@\"; rc=$?\nif [ $rc -eq 0 ] && [ -e {t}/kill-shim-start ]; then\n  rm -f {t}/kill-shim-start\n  prev=; for a in \"$@\"; do [ \"$prev\" = --bundle ] && b=$a; prev=$a; done\n  kill -9 \"$(cat \"$b/shim.pid\")\"\nfi\nexit $rc",
            real = berth_tests::bin("berth-shim").display(),
            t = t.display()
        ),
    );
    // runc, which kills its caller (the shim) on `run` or `exec` with the
    // trigger there, and goes on orphaned.
    berth_tests::script(
        &t.join("runc"),
        &format!(
            "for c in run exec; do\n  if [ -e {t}/kill-shim-$c ] && echo \" $* \" | grep -q \" $c \"; then rm -f {t}/kill-shim-$c; kill -9 $PPID; fi\ndone\nexec {real} \"$@\"",
            real = which("runc"),
            t = t.display()
        ),
    );
    let trigger =
        |step: &str| std::fs::write(t.join(format!("kill-shim-{step}")), "").expect("trigger");
    let fired = |step: &str| {
        assert!(
            !t.join(format!("kill-shim-{step}")).exists(),
            "{step} fired"
        )
    };
    let mut n = Node::new(
        "rk",
        &format!(
            "[shim]\nbinary = \"{}\"\n[runtimes.faulty]\nbinary = \"{}\"\nnative_exec = false\n",
            t.join("berth-shim").display(),
            t.join("runc").display()
        ),
    );
    n.d.spawn();
    n.pull().await;
    let mut rt = n.d.runtime().await;
    let clear = |e: &tonic::Status| {
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(e.message().contains("shim"), "{e:?}");
    };

    // Create, the pod's pause: the pod fails and leaves nothing.
    trigger("start");
    let e = faulty_pod(&mut rt, &n, "shim-create")
        .await
        .expect_err("its shim died");
    fired("start");
    clear(&e);
    assert!(list_pods(&mut rt).await.is_empty());
    n.assert_consistent();
    let pod = faulty_pod(&mut rt, &n, "shim-create")
        .await
        .expect("retried");

    // Create, a container: likewise; the pod goes on.
    trigger("start");
    let config = container_config("app", &n.image, &["sleep", "7171"]);
    let e = create_container(&mut rt, &pod, config.clone())
        .await
        .expect_err("its shim died");
    fired("start");
    clear(&e);
    n.assert_consistent();

    // Start: the shim dies as runc runs the container, which runc makes
    // all the same. The start fails, and what runc made is ended.
    let ctr = create_container(&mut rt, &pod, config.clone())
        .await
        .expect("CreateContainer");
    trigger("run");
    let e = start_container(&mut rt, &ctr)
        .await
        .expect_err("its shim died");
    fired("run");
    clear(&e);
    let s = container_status(&mut rt, &ctr).await.expect("status");
    assert_eq!(s.state, ContainerState::ContainerCreated as i32, "{s:?}");
    eventually(Duration::from_secs(10), "runc's orphan ended", || async {
        (berth_tests::processes_with("sleep\u{0}7171") == 0).then_some(())
    })
    .await;
    n.assert_consistent();
    remove_container(&mut rt, &ctr)
        .await
        .expect("RemoveContainer");
    n.assert_consistent();
    assert_eq!(
        berth_tests::processes_with("sleep\u{0}7171"),
        0,
        "the container ended"
    );

    // Exec (through runc): the exec fails; the container, its shim gone,
    // is reported exited.
    let ctr = create_container(&mut rt, &pod, config.clone())
        .await
        .expect("CreateContainer");
    start_container(&mut rt, &ctr)
        .await
        .expect("StartContainer");
    trigger("exec");
    let e = rt
        .exec_sync(ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["true".into()],
            timeout: 20,
        })
        .await
        .expect_err("its shim died");
    fired("exec");
    clear(&e);
    let s = exited(&mut rt, &ctr).await;
    assert_eq!(s.exit_code, 255, "{s:?}");
    n.assert_consistent();
    remove_pod(&mut rt, &pod).await.expect("remove pod");
    n.assert_consistent();
    assert_eq!(
        berth_tests::processes_with("sleep\u{0}7171"),
        0,
        "the containers ended"
    );

    // Exec started by the shim itself: the shim dies while the exec runs;
    // the call ends at once instead of at its timeout.
    let (pod, ctr) = pod_with(&n, &mut rt, "shim-exec", &["sleep", "7171"]).await;
    let shim = shim_pid(&n, &ctr);
    let mut call = rt.clone();
    let id = ctr.clone();
    let exec = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let r = call
            .exec_sync(ExecSyncRequest {
                container_id: id,
                cmd: vec!["sleep".into(), "30".into()],
                timeout: 60,
            })
            .await;
        (r, start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    berth_tests::signal(shim, libc::SIGKILL);
    let (r, took) = exec.await.expect("join");
    let e = r.expect_err("its shim died");
    clear(&e);
    assert!(took < Duration::from_secs(10), "{took:?}");
    exited(&mut rt, &ctr).await;
    remove_pod(&mut rt, &pod).await.expect("remove pod");
    n.assert_consistent();
    assert_eq!(
        berth_tests::processes_with("sleep\u{0}7171"),
        0,
        "the containers ended"
    );
    assert_eq!(
        berth_tests::processes_with("sleep\u{0}30"),
        0,
        "the exec ended"
    );
}
