//! Stats and metrics with 100 pods: ListPodSandboxStats,
//! ListPodSandboxMetrics and ListContainerStats (everything, as kubelet's
//! CRI stats provider asks) against containerd's CRI from Debian in the
//! same run, p50 and p99; and the daemons' CPU with the 100 pods up, idle
//! and with the stats asked for every second.
//!
//! Each pod runs one busybox `sleep` container beside its pause.
//!
//!   cargo build --release --workspace --bins
//!   cargo bench -p berth-bench --bench stats

use berth_bench::{berth_on_bridge, busybox_registry, table, PodPeer, Samples};
use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const PODS: usize = 100;
const WAVE: usize = 10;
const CALLS: usize = 40;
const IDLE: Duration = Duration::from_secs(20);

async fn client(socket: &Path) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(berth_tests::connect(socket).await)
        .max_decoding_message_size(64 << 20)
}

fn pod_config(who: &str, i: usize, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("{who}-{i}"),
            uid: format!("{who}-uid-{i}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("{who}-{i}"),
        log_directory: logs.join(i.to_string()).display().to_string(),
        // A pod cgroup of its own, as kubelet gives every pod (containerd
        // reads a pod's stats from it).
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/berth-bench-stats/{who}-pod{i}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One pod with a `sleep` container, running; answers the pod's ID.
async fn pod_with_container(
    socket: &Path,
    who: &str,
    i: usize,
    image: &str,
    logs: &Path,
) -> Result<String, tonic::Status> {
    let mut c = client(socket).await;
    let config = pod_config(who, i, logs);
    let pod = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let id = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "sleeper".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "100000".into()],
                log_path: "sleeper.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await?
        .into_inner()
        .container_id;
    c.start_container(StartContainerRequest { container_id: id })
        .await?;
    Ok(pod)
}

/// `PODS` pods, `WAVE` at a time.
async fn populate(socket: &Path, who: &str, image: &str, logs: &Path) -> Vec<String> {
    berth_bench::pull(socket, image)
        .await
        .unwrap_or_else(|e| panic!("{who}: {e}"));
    let mut pods = Vec::new();
    for chunk in (0..PODS).collect::<Vec<_>>().chunks(WAVE) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let (socket, who, image, logs) = (
                    socket.to_path_buf(),
                    who.to_string(),
                    image.to_string(),
                    logs.to_path_buf(),
                );
                tokio::spawn(
                    async move { pod_with_container(&socket, &who, i, &image, &logs).await },
                )
            })
            .collect();
        for t in tasks {
            pods.push(
                t.await
                    .expect("task")
                    .unwrap_or_else(|e| panic!("{who}: a pod: {e}")),
            );
        }
    }
    pods
}

async fn remove_all(socket: &Path, pods: &[String]) {
    let mut c = client(socket).await;
    for p in pods {
        let _ = c
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: p.clone(),
            })
            .await;
        let _ = c
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: p.clone(),
            })
            .await;
    }
}

/// The three listing calls, `CALLS` times each; a call the runtime does
/// not serve gives no row, and its answer is printed.
async fn listings(socket: &Path, who: &str) -> Vec<Samples> {
    let mut c = client(socket).await;
    let mut rows = Vec::new();
    for call in [
        "ListPodSandboxStats",
        "ListPodSandboxMetrics",
        "ListContainerStats",
    ] {
        let mut lat = Vec::with_capacity(CALLS);
        let begin = Instant::now();
        let mut seen = 0;
        for _ in 0..CALLS {
            let t = Instant::now();
            let answer = match call {
                "ListPodSandboxStats" => c
                    .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
                    .await
                    .map(|r| r.into_inner().stats.len()),
                "ListPodSandboxMetrics" => c
                    .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
                    .await
                    .map(|r| r.into_inner().pod_metrics.len()),
                _ => c
                    .list_container_stats(ListContainerStatsRequest::default())
                    .await
                    .map(|r| r.into_inner().stats.len()),
            };
            match answer {
                Ok(n) => seen = n,
                Err(e) => {
                    println!("{who}: {call}: {:?}: {}", e.code(), e.message());
                    break;
                }
            }
            lat.push(t.elapsed());
        }
        if lat.len() == CALLS {
            assert!(seen >= PODS, "{who}: {call} answered {seen} entries");
            rows.push(Samples::new(
                format!("{who}: {call} ({seen})"),
                lat,
                begin.elapsed(),
            ));
        }
    }
    rows
}

/// CPU time (user + system) of `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // After the command name in parentheses: state is field 3, utime 14,
    // stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    at(11) + at(12)
}

/// Processes whose command line holds `needle`.
fn pids_with(needle: &str) -> Vec<u32> {
    berth_bench::all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// Share of one core the daemon and (summed) its shims used over
/// `IDLE`, with `poll` asking for the pods' stats every second if set.
async fn cpu_share(socket: &Path, daemon: u32, shims: &[u32], poll: bool) -> (f64, f64) {
    let ticks = |pids: &[u32]| pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    let (d0, s0) = (cpu_ticks(daemon), ticks(shims));
    let begin = Instant::now();
    if poll {
        let mut c = client(socket).await;
        while begin.elapsed() < IDLE {
            let _ = c
                .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
                .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    } else {
        tokio::time::sleep(IDLE).await;
    }
    let secs = begin.elapsed().as_secs_f64();
    let share = |t: u64| t as f64 / 100.0 / secs * 100.0;
    (
        share(cpu_ticks(daemon) - d0),
        share(ticks(shims).saturating_sub(s0)),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (reg, image, _) = busybox_registry();
    let d = berth_on_bridge(&reg, "bstats0", "10.94.0.0/16");
    let logs = d.dir.path().join("logs");
    let t = Instant::now();
    let pods = populate(&d.cri_socket(), "berth", &image, &logs).await;
    println!(
        "berth: {PODS} pods with a container each in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut rows = listings(&d.cri_socket(), "berth").await;
    let shims = pids_with(&d.dir.path().display().to_string())
        .into_iter()
        .filter(|p| *p != d.pid())
        .collect::<Vec<_>>();
    let berth_idle = cpu_share(&d.cri_socket(), d.pid(), &shims, false).await;
    let berth_poll = cpu_share(&d.cri_socket(), d.pid(), &shims, true).await;
    remove_all(&d.cri_socket(), &pods).await;
    drop(d);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "bstats0"])
        .status();

    let mut peer_cpu = None;
    if let Some(p) = PodPeer::start(&reg).await {
        let socket = p.peer().socket();
        let t = Instant::now();
        let pods = populate(&socket, "containerd", &image, &p.logs()).await;
        println!(
            "containerd: {PODS} pods with a container each in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        rows.extend(listings(&socket, "containerd").await);
        let shims = pids_with("containerd-shim");
        let pid = p.peer().pid();
        let idle = cpu_share(&socket, pid, &shims, false).await;
        let poll = cpu_share(&socket, pid, &shims, true).await;
        peer_cpu = Some((idle, poll));
        remove_all(&socket, &pods).await;
    }
    let refs: Vec<&Samples> = rows.iter().collect();
    table(&format!("stats and metrics, {PODS} pods"), &refs, &[]);
    println!();
    for call in [
        "ListPodSandboxStats",
        "ListPodSandboxMetrics",
        "ListContainerStats",
    ] {
        let find = |who: &str| {
            rows.iter()
                .find(|r| r.name.starts_with(&format!("{who}: {call}")))
        };
        if let (Some(b), Some(c)) = (find("berth"), find("containerd")) {
            println!(
                "{call}: berth p50 {:.2} ms p99 {:.2} ms; containerd p50 {:.2} ms p99 {:.2} ms; berth/containerd p50 {:.2}×",
                b.p50().as_secs_f64() * 1e3,
                b.p99().as_secs_f64() * 1e3,
                c.p50().as_secs_f64() * 1e3,
                c.p99().as_secs_f64() * 1e3,
                b.p50().as_secs_f64() / c.p50().as_secs_f64().max(1e-12)
            );
        }
    }
    let show = |who: &str, (idle, poll): ((f64, f64), (f64, f64))| {
        println!(
            "{who} CPU with {PODS} pods, % of one core over {} s: daemon idle {:.2}%, shims idle {:.2}% (all {PODS}×2 together); daemon with ListPodSandboxStats every second {:.2}%",
            IDLE.as_secs(),
            idle.0,
            idle.1,
            poll.0
        );
    };
    show("berth", (berth_idle, berth_poll));
    if let Some(c) = peer_cpu {
        show("containerd", c);
    }
}
