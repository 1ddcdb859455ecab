//! Recovery: how long berthd takes from its start to serving the CRI
//! socket again after a SIGKILL, with 10, 100 and 500 running containers
//! (each is a container, a shim and a root filesystem in the journal, and
//! a live shim to reconnect), beside the floor measured in the same run:
//! berthd starting on an empty journal. Then the journal's write
//! throughput under a pod create/remove load, without and with chaos
//! (an actor killed every 300 ms), and what the consistency check finds
//! afterwards.
//!
//!   cargo build --release --workspace --bins
//!   cargo bench -p berth-bench --bench recovery

use berth_bench::{table, Samples};
use berth_protocol::admin::{JournalStatsRequest, StartChaosRequest, StopChaosRequest};
use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_tests::node::*;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Restarts measured per size.
const RESTARTS: usize = 7;
/// How long each throughput run lasts.
const LOAD: Duration = Duration::from_secs(15);
/// Pod makers at a time during the throughput runs.
const WORKERS: usize = 4;

/// Starts running containers `from..to` (in pods of 50, made as needed
/// and kept in `pods`), 10 at a time.
async fn fill(
    n: &Node,
    rt: &mut RuntimeServiceClient<Channel>,
    pods: &mut Vec<String>,
    from: usize,
    to: usize,
) {
    while pods.len() < to.div_ceil(50) {
        let config = pod_config(&format!("fill-{}", pods.len()), &n.logs());
        pods.push(run_pod(rt, config).await.expect("RunPodSandbox"));
    }
    let mut made = from;
    while made < to {
        let wave: Vec<_> = (made..(made + 10).min(to))
            .map(|i| {
                let (mut rt, pod, image) = (rt.clone(), pods[i / 50].clone(), n.image.clone());
                tokio::spawn(async move {
                    let config = container_config(&format!("c{i}"), &image, &["sleep", "100000"]);
                    let id = create_container(&mut rt, &pod, config)
                        .await
                        .expect("CreateContainer");
                    start_container(&mut rt, &id).await.expect("StartContainer");
                })
            })
            .collect();
        made += wave.len();
        for w in wave {
            w.await.expect("container");
        }
    }
}

/// SIGKILL, then the time from berthd's start until the CRI socket
/// answers a call, `RESTARTS` times.
async fn restarts(n: &mut Node, name: &str) -> Samples {
    let mut times = Vec::new();
    let start = Instant::now();
    for _ in 0..RESTARTS {
        n.d.kill9();
        let t = Instant::now();
        n.d.spawn();
        let mut rt = n.d.runtime().await;
        rt.version(berth_protocol::cri::VersionRequest::default())
            .await
            .expect("Version");
        times.push(t.elapsed());
    }
    Samples::new(name, times, start.elapsed())
}

async fn journal_writes(n: &Node) -> u64 {
    n.d.admin()
        .await
        .journal_stats(JournalStatsRequest {})
        .await
        .map(|r| r.into_inner().writes)
        .unwrap_or(0)
}

/// Pod create/remove cycles by `WORKERS` workers for `LOAD`; answers the
/// cycles done and the journal writes per second.
async fn load(n: &Node, tag: &str) -> (u64, f64) {
    let before = journal_writes(n).await;
    let start = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (socket, logs) = (n.d.cri_socket(), n.logs());
            let tag = tag.to_string();
            tokio::spawn(async move {
                let mut cycles = 0u64;
                let mut i = 0;
                while start.elapsed() < LOAD {
                    i += 1;
                    let Ok(ch) = berth_protocol::uds::connect(&socket).await else {
                        continue;
                    };
                    let mut rt = RuntimeServiceClient::new(ch);
                    let config = pod_config(&format!("{tag}-{w}-{i}"), &logs);
                    let Ok(pod) = run_pod(&mut rt, config).await else {
                        continue;
                    };
                    // Removal is retried until it holds: nothing may stay.
                    while remove_pod(&mut rt, &pod).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    cycles += 1;
                }
                cycles
            })
        })
        .collect();
    let mut cycles = 0;
    for w in workers {
        cycles += w.await.expect("worker");
    }
    let secs = start.elapsed().as_secs_f64();
    let writes = journal_writes(n).await.saturating_sub(before);
    (cycles, writes as f64 / secs)
}

/// The consistency check, repeated for up to 15 s while it finds
/// something (a removal's last steps, such as a shim exiting, finish just
/// after the call returns; berthd's sweeps run every 5 to 10 s): what it
/// still finds then has leaked.
fn settled_fsck(n: &Node) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, found) = n.fsck();
        if ok {
            return "nothing leaked or missing".into();
        }
        if Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let mut n = Node::new("brec", "");
    n.d.spawn();
    n.pull().await;
    let floor = restarts(&mut n, "floor: berthd start, empty journal").await;

    let mut rows = Vec::new();
    let mut filled = 0;
    let mut pods = Vec::new();
    for size in [10usize, 100, 500] {
        let mut rt = n.d.runtime().await;
        fill(&n, &mut rt, &mut pods, filled, size).await;
        filled = size;
        rows.push(restarts(&mut n, &format!("restart, {size} running containers")).await);
        let report = String::from_utf8_lossy(&n.d.berthctl(&["recovery"]).stdout).to_string();
        println!(
            "{size} containers: {}",
            report.lines().next().unwrap_or_default()
        );
        if size == 100 {
            // Throughput with 100 containers running beside the load.
            let (cycles, quiet) = load(&n, "quiet").await;
            println!("journal writes/s under a pod create/remove load: {quiet:.0} ({cycles} pod cycles in {LOAD:?})");
            let mut admin = n.d.admin().await;
            admin
                .start_chaos(StartChaosRequest {
                    interval_ms: 300,
                    actors: Vec::new(),
                    mode: 0,
                })
                .await
                .expect("chaos");
            let (cycles, chaotic) = load(&n, "chaos").await;
            let chaos = admin
                .stop_chaos(StopChaosRequest {})
                .await
                .expect("stop chaos")
                .into_inner();
            println!(
                "journal writes/s under the same load with chaos ({} actor kills): {chaotic:.0} ({cycles} pod cycles), {:.2}× the quiet rate",
                chaos.kills,
                chaotic / quiet.max(1e-9)
            );
            println!(
                "consistency check after the chaos load: {}",
                settled_fsck(&n)
            );
        }
    }
    let refs = [&floor];
    let all: Vec<&Samples> = std::iter::once(&floor).chain(rows.iter()).collect();
    table("berthd start to serving after SIGKILL", &all, &refs);

    let mut rt = n.d.runtime().await;
    let pods = rt
        .list_pod_sandbox(berth_protocol::cri::ListPodSandboxRequest::default())
        .await
        .expect("list")
        .into_inner()
        .items;
    for p in pods {
        let _ = remove_pod(&mut rt, &p.id).await;
    }
    println!(
        "\nconsistency check after removing everything: {}",
        settled_fsck(&n)
    );
}
