//! The soak: kubelet-like churn for a long time while chaos kills actors.
//! Four workers each make a pod with three containers, start them, probe
//! them with ExecSync, stop and remove them, over and over; beside them,
//! lists every 200 ms, stats every second, and an image pull every 5 s, as
//! kubelet's loops do. An actor is killed every `BERTH_SOAK_CHAOS_MS`
//! (default 2000; 0 for none). Every 10 s berthd's RSS and open files are sampled.
//! At the end everything is removed and the consistency check must find
//! nothing leaked (shims, mounts, namespaces, IPs, cgroups).
//!
//!   BERTH_SOAK_SECS=3600 bench/run soak     (default: an hour)

use berth_bench::{rss_kib, Samples};
use berth_protocol::admin::{StartChaosRequest, StopChaosRequest};
use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use berth_tests::node::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const WORKERS: usize = 4;
const CONTAINERS: usize = 3;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Latencies and failures per RPC.
#[derive(Default)]
struct Calls {
    ok: BTreeMap<&'static str, Vec<Duration>>,
    failed: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// The first few distinct failure messages per RPC.
    said: BTreeMap<&'static str, Vec<String>>,
}

/// A failure message without its IDs and numbers, to tell kinds apart.
fn kind_of(message: &str) -> String {
    message
        .split_whitespace()
        .map(|w| {
            if w.chars().any(|c| c.is_ascii_digit()) {
                "#"
            } else {
                w
            }
        })
        .take(14)
        .collect::<Vec<_>>()
        .join(" ")
}

type Shared = Arc<Mutex<Calls>>;

/// Times one call and records how it went.
async fn timed<T, F>(calls: &Shared, rpc: &'static str, f: F) -> Result<T, tonic::Status>
where
    F: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let t = Instant::now();
    let out = f.await;
    let took = t.elapsed();
    if let Ok(mut c) = calls.lock() {
        match &out {
            Ok(_) => c.ok.entry(rpc).or_default().push(took),
            Err(e) => {
                *c.failed
                    .entry(rpc)
                    .or_default()
                    .entry(format!("{:?}", e.code()))
                    .or_default() += 1;
                let kind = format!("{:?}: {}", e.code(), kind_of(e.message()));
                let said = c.said.entry(rpc).or_default();
                if said.len() < 4 && !said.contains(&kind) {
                    said.push(kind);
                }
            }
        }
    }
    out
}

/// Retries `f` until it succeeds (as kubelet does), for at most a minute.
async fn until_ok<T, F, Fut>(f: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// One pod's life: made, three containers started, probed, stopped and
/// removed. Answers whether the pod went away in the end.
async fn cycle(
    rt: &RuntimeServiceClient<Channel>,
    n: &NodeInfo,
    calls: &Shared,
    name: &str,
) -> bool {
    let config = pod_config(name, &n.logs);
    let pod = {
        let (rt, calls, config) = (rt.clone(), calls.clone(), config.clone());
        until_ok(move || {
            let (mut rt, calls, config) = (rt.clone(), calls.clone(), config.clone());
            async move { timed(&calls, "RunPodSandbox", run_pod(&mut rt, config)).await }
        })
        .await
    };
    let Some(pod) = pod else {
        return false;
    };
    let mut ids = Vec::new();
    for i in 0..CONTAINERS {
        let (rt2, calls2, image, pod2) = (rt.clone(), calls.clone(), n.image.clone(), pod.clone());
        let id = until_ok(move || {
            let (mut rt, calls, image, pod) =
                (rt2.clone(), calls2.clone(), image.clone(), pod2.clone());
            async move {
                let c = container_config(&format!("c{i}"), &image, &["sleep", "100000"]);
                timed(
                    &calls,
                    "CreateContainer",
                    create_container(&mut rt, &pod, c),
                )
                .await
            }
        })
        .await;
        let Some(id) = id else { break };
        let (rt2, calls2, id2) = (rt.clone(), calls.clone(), id.clone());
        until_ok(move || {
            let (mut rt, calls, id) = (rt2.clone(), calls2.clone(), id2.clone());
            async move {
                // A start whose answer a killed actor lost took effect:
                // the retry finds it running, as kubelet's next look would.
                match timed(&calls, "StartContainer", start_container(&mut rt, &id)).await {
                    Err(e)
                        if e.code() == tonic::Code::FailedPrecondition
                            && e.message().contains("is Running") =>
                    {
                        Ok(())
                    }
                    other => other,
                }
            }
        })
        .await;
        ids.push(id);
    }
    for _ in 0..3 {
        for id in &ids {
            let mut rt = rt.clone();
            let _ = timed(
                calls,
                "ExecSync",
                rt.exec_sync(ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["cat".into(), "/etc/hostname".into()],
                    timeout: 5,
                }),
            )
            .await;
        }
    }
    for id in &ids {
        let (rt2, calls2, id2) = (rt.clone(), calls.clone(), id.clone());
        until_ok(move || {
            let (mut rt, calls, id) = (rt2.clone(), calls2.clone(), id2.clone());
            async move {
                timed(
                    &calls,
                    "StopContainer",
                    rt.stop_container(StopContainerRequest {
                        container_id: id,
                        timeout: 0,
                    }),
                )
                .await
            }
        })
        .await;
    }
    let (rt2, calls2) = (rt.clone(), calls.clone());
    until_ok(move || {
        let (mut rt, calls, pod) = (rt2.clone(), calls2.clone(), pod.clone());
        async move { timed(&calls, "RemovePodSandbox", remove_pod(&mut rt, &pod)).await }
    })
    .await
    .is_some()
}

#[derive(Clone)]
struct NodeInfo {
    image: String,
    logs: std::path::PathBuf,
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let secs = env_u64("BERTH_SOAK_SECS", 3600);
    let chaos_ms = env_u64("BERTH_SOAK_CHAOS_MS", 2000);
    let mut n = Node::new("bsoak", "");
    n.d.spawn();
    n.pull().await;
    let info = NodeInfo {
        image: n.image.clone(),
        logs: n.logs(),
    };
    let pid = n.d.pid();
    let rt = n.d.runtime().await;
    let calls: Shared = Arc::default();
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let (rss0, fds0) = (rss_kib(pid), open_files(pid));
    println!("soak: {secs} s, {WORKERS} workers, {CONTAINERS} containers per pod, an actor killed every {chaos_ms} ms");
    println!("{:>6} {:>10} {:>6} {:>7}", "s", "RSS KiB", "fds", "pods");

    let mut admin = n.d.admin().await;
    // BERTH_SOAK_CHAOS_MS=0: no chaos.
    if chaos_ms > 0 {
        admin
            .start_chaos(StartChaosRequest {
                interval_ms: chaos_ms,
                actors: Vec::new(),
                mode: 0,
            })
            .await
            .expect("chaos");
    }

    let cycles = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (rt, info, calls, cycles, lost) = (
            rt.clone(),
            info.clone(),
            calls.clone(),
            cycles.clone(),
            lost.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < until {
                i += 1;
                if cycle(&rt, &info, &calls, &format!("soak-{w}-{i}")).await {
                    cycles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    // kubelet's loops: lists, stats, pulls.
    {
        let (rt, calls) = (rt.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = 0u64;
            while Instant::now() < until {
                let mut r = rt.clone();
                let _ = timed(
                    &calls,
                    "ListPodSandbox",
                    r.list_pod_sandbox(ListPodSandboxRequest::default()),
                )
                .await;
                let _ = timed(
                    &calls,
                    "ListContainers",
                    r.list_containers(ListContainersRequest::default()),
                )
                .await;
                if tick.is_multiple_of(5) {
                    let _ = timed(
                        &calls,
                        "ListContainerStats",
                        r.list_container_stats(ListContainerStatsRequest::default()),
                    )
                    .await;
                    let _ = timed(
                        &calls,
                        "ListPodSandboxStats",
                        r.list_pod_sandbox_stats(ListPodSandboxStatsRequest::default()),
                    )
                    .await;
                }
                tick += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    {
        let (calls, image, socket) = (calls.clone(), info.image.clone(), n.d.cri_socket());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                if let Ok(ch) = berth_protocol::uds::connect(&socket).await {
                    let mut images =
                        berth_protocol::cri::image_service_client::ImageServiceClient::new(ch);
                    let spec = Some(ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    });
                    let _ = timed(
                        &calls,
                        "PullImage",
                        images.pull_image(PullImageRequest {
                            image: spec.clone(),
                            ..Default::default()
                        }),
                    )
                    .await;
                    let _ = timed(
                        &calls,
                        "ImageStatus",
                        images.image_status(ImageStatusRequest {
                            image: spec,
                            verbose: false,
                        }),
                    )
                    .await;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
    }
    let mut samples = vec![(0u64, rss0, fds0)];
    while Instant::now() < until {
        tokio::time::sleep(
            Duration::from_secs(10).min(until.saturating_duration_since(Instant::now())),
        )
        .await;
        let at = start.elapsed().as_secs();
        let s = (at, rss_kib(pid), open_files(pid));
        println!(
            "{:>6} {:>10} {:>6} {:>7}",
            s.0,
            s.1,
            s.2,
            cycles.load(std::sync::atomic::Ordering::Relaxed)
        );
        samples.push(s);
    }
    for t in tasks {
        let _ = t.await;
    }
    let chaos = admin
        .stop_chaos(StopChaosRequest {})
        .await
        .expect("stop chaos")
        .into_inner();
    let wall = start.elapsed();

    // Everything goes, then the check.
    let mut r = rt.clone();
    if let Ok(list) = r.list_pod_sandbox(ListPodSandboxRequest::default()).await {
        for p in list.into_inner().items {
            let (rt2, id) = (rt.clone(), p.id.clone());
            until_ok(move || {
                let (mut rt, id) = (rt2.clone(), id.clone());
                async move { remove_pod(&mut rt, &id).await }
            })
            .await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(75);
    let fsck = loop {
        let (ok, found) = n.fsck();
        if ok {
            break "nothing leaked or missing".to_string();
        }
        if Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let done = cycles.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "\n{done} pod cycles ({} containers) in {:.0} s: {:.1} pods/min; {} cycles gave up; {} actor kills",
        done * CONTAINERS as u64,
        wall.as_secs_f64(),
        done as f64 * 60.0 / wall.as_secs_f64(),
        lost.load(std::sync::atomic::Ordering::Relaxed),
        chaos.kills
    );
    let last = samples.last().copied().unwrap_or_default();
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    println!(
        "berthd RSS {rss0} KiB at the start, {} KiB at the end (peak {peak}); open files {fds0} → {}",
        last.1, last.2
    );
    println!(
        "\n{:<22} {:>8} {:>10} {:>10}  failures",
        "RPC", "n", "p50 ms", "p99 ms"
    );
    let c = calls
        .lock()
        .map(|c| (c.ok.clone(), c.failed.clone(), c.said.clone()))
        .unwrap_or_default();
    for (rpc, lat) in &c.0 {
        let s = Samples::new(*rpc, lat.clone(), wall);
        let failed = c.1.get(rpc).map(|m| format!("{m:?}")).unwrap_or_default();
        println!(
            "{:<22} {:>8} {:>10.2} {:>10.2}  {failed}",
            rpc,
            s.latencies.len(),
            s.p50().as_secs_f64() * 1e3,
            s.p99().as_secs_f64() * 1e3
        );
    }
    println!("\nfailures, by kind (chaos makes calls caught in a killed actor UNAVAILABLE):");
    for (rpc, kinds) in &c.2 {
        for k in kinds {
            println!("  {rpc}: {k}");
        }
    }
    println!("\nconsistency check after removing everything: {fsck}");
}
