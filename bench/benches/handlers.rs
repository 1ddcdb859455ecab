//! Runtime handlers side by side: the container cycle (CreateContainer →
//! StartContainer → StopContainer → RemoveContainer of a busybox `sleep
//! 1000`, one container after another in one pod) under each of berth's
//! handlers — berth-shim with runc, crun and youki, and containerd's
//! `containerd-shim-runc-v2` with runc (`runc-v2`) — against the floor
//! (bare runc) and containerd's CRI from Debian (its runc v2 shim), in the
//! same run; and what the shims of one pod with 3 running containers cost
//! in memory (PSS, and RSS) under each.
//!
//! A handler that cannot run pods on this node (not installed, or refused
//! by the runtime's own start-up probe) is reported with berthd's reason.
//!
//!   bench/run handlers

use berth_bench::{
    bench_pod, berth_configured_on_bridge, busybox_registry, pull, runc_floor, sleeper, table,
    PodPeer, Samples,
};
use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Container cycles per handler.
const CYCLES: usize = 50;
/// Running containers in the pod whose shims' memory is read.
const RESIDENTS: usize = 3;

const BRIDGE: &str = "bhnd0";
const SUBNET: &str = "10.93.0.0/16";

/// berth's handlers: (handler, what runs the container).
const HANDLERS: [(&str, &str); 4] = [
    ("runc", "berth-shim + runc"),
    ("crun", "berth-shim + crun"),
    ("youki", "berth-shim + youki"),
    ("runc-v2", "containerd-shim-runc-v2 + runc"),
];

fn said(who: &str, rpc: &str, e: tonic::Status) -> String {
    format!("{who}: {rpc}: {:?}: {}", e.code(), e.message())
}

/// A container created and started; its ID.
async fn running(
    rt: &mut RuntimeServiceClient<Channel>,
    who: &str,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String, String> {
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .map_err(|e| said(who, "CreateContainer", e))?
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .map_err(|e| said(who, "StartContainer", e))?;
    Ok(id)
}

/// One container's cycle; its time.
async fn cycle(
    rt: &mut RuntimeServiceClient<Channel>,
    who: &str,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<Duration, String> {
    let t = Instant::now();
    let id = running(rt, who, pod_id, pod, config).await?;
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .map_err(|e| said(who, "StopContainer", e))?;
    rt.remove_container(RemoveContainerRequest { container_id: id })
        .await
        .map_err(|e| said(who, "RemoveContainer", e))?;
    Ok(t.elapsed())
}

/// A process's proportional and resident memory, in KiB.
fn pss_rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Rss:"))
}

/// The shim processes whose command line names any of `ids`.
fn shims_of(ids: &[String]) -> Vec<u32> {
    berth_bench::all_pids()
        .into_iter()
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let shim = args
                .first()
                .is_some_and(|a| a.ends_with("berth-shim") || a.contains("containerd-shim"));
            shim && args.iter().any(|a| {
                ids.iter()
                    .any(|id| a == id || a.ends_with(&format!("/{id}")))
            })
        })
        .collect()
}

/// What one handler measured.
struct Measured {
    cycle: Samples,
    /// The shims of a pod with `RESIDENTS` running containers: how many,
    /// PSS and RSS in KiB.
    shims: (usize, u64, u64),
}

async fn measure(
    socket: &Path,
    who: &str,
    handler: &str,
    image: &str,
    logs: &Path,
) -> Result<Measured, String> {
    let mut rt = RuntimeServiceClient::new(berth_tests::connect(socket).await);
    let tag = format!(
        "{}-{}",
        who.split_whitespace().next().unwrap_or(who),
        handler
    );
    let pod = bench_pod("handler-bench", &tag, logs);
    let pod_id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .map_err(|e| said(who, "RunPodSandbox", e))?
        .into_inner()
        .pod_sandbox_id;
    // One untimed cycle first: the first container of a pod warms caches.
    cycle(&mut rt, who, &pod_id, &pod, sleeper("warm", image)).await?;
    let mut times = Vec::with_capacity(CYCLES);
    let begin = Instant::now();
    for i in 0..CYCLES {
        let config = sleeper(&format!("c{i}"), image);
        times.push(cycle(&mut rt, who, &pod_id, &pod, config).await?);
    }
    let wall = begin.elapsed();

    let mut ids = vec![pod_id.clone()];
    for i in 0..RESIDENTS {
        let config = sleeper(&format!("resident{i}"), image);
        ids.push(running(&mut rt, who, &pod_id, &pod, config).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shims = shims_of(&ids);
    for pid in &shims {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .take(5)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        println!("  {who} {handler}: shim {pid}: {}", args.join(" "));
    }
    let (pss, rss) = shims
        .iter()
        .map(|p| pss_rss_kib(*p))
        .fold((0, 0), |(a, b), (p, r)| (a + p, b + r));
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .map_err(|e| said(who, "StopPodSandbox", e))?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod_id,
    })
    .await
    .map_err(|e| said(who, "RemovePodSandbox", e))?;
    Ok(Measured {
        cycle: Samples::new(format!("{who}: cycle"), times, wall),
        shims: (shims.len(), pss, rss),
    })
}

/// Waits until berthd has tried its handlers: (usable handlers, reasons
/// the others were refused, by handler).
async fn tried(socket: &Path) -> (Vec<String>, Vec<(String, String)>) {
    let mut rt = RuntimeServiceClient::new(berth_tests::connect(socket).await);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = rt
            .status(StatusRequest { verbose: false })
            .await
            .expect("Status")
            .into_inner();
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        let refused: Vec<(String, String)> = conditions
            .iter()
            .filter_map(|c| {
                let name = c.r#type.strip_prefix("RuntimeHandlerReady/")?;
                (!c.status).then(|| (name.to_string(), c.message.clone()))
            })
            .collect();
        let usable: Vec<String> = status
            .runtime_handlers
            .iter()
            .map(|h| h.name.clone())
            .collect();
        // The tries end all at once: a refusal says they are done (a node
        // where every handler works waits out the limit).
        let settled = !refused.is_empty() || Instant::now() > deadline;
        if settled {
            return (usable, refused);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let work = tempfile::Builder::new()
        .prefix("berth-bench-handlers-")
        .tempdir()
        .expect("tempdir");
    let (reg, image, layer_bytes) = busybox_registry();

    let mut d = berth_configured_on_bridge(
        &reg,
        BRIDGE,
        SUBNET,
        "[runtimes.crun]\nbinary = \"crun\"\n[runtimes.youki]\nbinary = \"youki\"\n",
    );
    let socket = d.cri_socket();
    let logs = d.dir.path().join("logs");
    pull(&socket, &image).await.expect("berth pulls busybox");
    let (usable, refused) = tried(&socket).await;
    let mut results: Vec<(String, Measured)> = Vec::new();
    for (handler, what) in HANDLERS {
        if !usable.iter().any(|u| u == handler) {
            let why = refused
                .iter()
                .find(|(r, _)| r == handler)
                .map(|(_, m)| m.as_str())
                .unwrap_or("not listed in Status");
            println!("{handler} ({what}): cannot run pods here: {why}");
            continue;
        }
        let who = format!("berth {handler}");
        match measure(&socket, &who, handler, &image, &logs).await {
            Ok(m) => results.push((what.to_string(), m)),
            Err(e) => println!("{handler} ({what}): {e}"),
        }
    }
    let (status, _) = d.terminate(Duration::from_secs(30));
    if !status.success() {
        eprintln!("berthd exited with {status} after SIGTERM");
    }
    let _ = std::process::Command::new("ip")
        .args(["link", "del", BRIDGE])
        .status();

    let floor = runc_floor(&layer_bytes, work.path(), CYCLES);
    let floor_cycle = floor.last().expect("the floor's cycle");

    let containerd = match PodPeer::start(&reg).await {
        Some(p) => {
            let socket = p.peer().socket();
            let m = match pull(&socket, &image).await {
                Ok(()) => measure(&socket, "containerd runc-v2", "", &image, &p.logs()).await,
                Err(e) => Err(e),
            };
            match m {
                Ok(m) => Some(m),
                Err(e) => {
                    println!("containerd: {e}");
                    None
                }
            }
        }
        None => None,
    };

    let mut rows: Vec<&Samples> = results.iter().map(|(_, m)| &m.cycle).collect();
    rows.push(floor_cycle);
    if let Some(c) = &containerd {
        rows.push(&c.cycle);
    }
    let mut references = vec![floor_cycle];
    if let Some(c) = &containerd {
        references.push(&c.cycle);
    }
    table(
        &format!("container cycle per runtime handler, {CYCLES} containers one after another"),
        &rows,
        &references,
    );
    println!(
        "\n(create → start → stop → remove of busybox `sleep 1000`; the × columns divide each p50 by the floor's and by containerd's)\n"
    );
    println!("## shims of one pod with {RESIDENTS} running containers\n");
    println!(
        "{:<36} {:>6} {:>10} {:>10}",
        "handler", "shims", "PSS KiB", "RSS KiB"
    );
    let mut lines: Vec<(String, (usize, u64, u64))> = results
        .iter()
        .map(|(what, m)| (format!("berth: {what}"), m.shims))
        .collect();
    if let Some(c) = &containerd {
        lines.push(("containerd: containerd-shim-runc-v2".into(), c.shims));
    }
    for (name, (n, pss, rss)) in lines {
        println!("{name:<36} {n:>6} {pss:>10} {rss:>10}");
    }
    if let (Some(c), Some(fastest)) = (
        &containerd,
        results.iter().min_by_key(|(_, m)| m.cycle.p50()),
    ) {
        println!(
            "\nfastest handler ({}): cycle p50 {:.1} ms; floor {:.1} ms; containerd {:.1} ms",
            fastest.0,
            ms(fastest.1.cycle.p50()),
            ms(floor_cycle.p50()),
            ms(c.cycle.p50())
        );
    }
    if let (Some(c), Some((_, v2))) = (
        &containerd,
        results
            .iter()
            .find(|(w, _)| w.starts_with("containerd-shim")),
    ) {
        println!(
            "runc-v2 pod on berth against the same shim under containerd: cycle {:.2}×, shims' PSS {:.2}×",
            v2.cycle.p50().as_secs_f64() / c.cycle.p50().as_secs_f64().max(1e-12),
            v2.shims.1 as f64 / (c.shims.1 as f64).max(1.0)
        );
    }
}
