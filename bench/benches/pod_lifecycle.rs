//! Pod lifecycle: RunPodSandbox, PodSandboxStatus, StopPodSandbox and
//! RemovePodSandbox over 50 pods, serially and 10 at a time, beside
//!
//! - the floor, measured in the same run: `ip netns add`/`del`, the same
//!   CNI ADD and DEL run by hand, and bare `runc run -d` / `runc delete` of
//!   the same pause bundle;
//! - the peer: containerd's CRI from Debian's package (started with
//!   shared/peers/containerd-peer), running the same pause program as its
//!   sandbox image, from a local registry;
//!
//! and the resident memory of berthd with 50 pods and of one berth-shim,
//! against containerd and its shims.
//!
//!   cargo build --release --workspace --bins
//!   cargo bench -p berth-bench --bench pod_lifecycle

use berth_actors::network::cni::{Attachment, NetworkList, Plugins};
use berth_bench::{conflist, push_pause, rss_kib, table, Peer, Samples};
use berth_protocol::cri::image_service_client::ImageServiceClient;
use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use berth_tests::registry::Registry;
use berth_tests::Daemon;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const PODS: usize = 50;
const WAVE: usize = 10;

fn pod(i: usize, tag: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("{tag}-{i}"),
            uid: format!("{tag}-uid-{i}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("{tag}-{i}"),
        log_directory: String::new(),
        ..Default::default()
    }
}

async fn client(socket: &Path) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(berth_tests::connect(socket).await)
}

/// Latencies of the four verbs.
#[derive(Default)]
struct Verbs {
    run: Vec<Duration>,
    status: Vec<Duration>,
    stop: Vec<Duration>,
    remove: Vec<Duration>,
    wall: [Duration; 4],
}

impl Verbs {
    fn samples(self, who: &str, how: &str) -> [Samples; 4] {
        [
            Samples::new(
                format!("{who} RunPodSandbox, {how}"),
                self.run,
                self.wall[0],
            ),
            Samples::new(
                format!("{who} PodSandboxStatus, {how}"),
                self.status,
                self.wall[1],
            ),
            Samples::new(
                format!("{who} StopPodSandbox, {how}"),
                self.stop,
                self.wall[2],
            ),
            Samples::new(
                format!("{who} RemovePodSandbox, {how}"),
                self.remove,
                self.wall[3],
            ),
        ]
    }
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let v = f.await;
    (v, t.elapsed())
}

/// Runs every pod, waves of `wave` at a time, then each other verb the
/// same way; `between` runs with all pods up (memory measurements).
async fn lifecycle(socket: &Path, tag: &str, wave: usize, between: impl FnOnce()) -> Verbs {
    let mut v = Verbs::default();
    let mut ids = Vec::new();
    let start = Instant::now();
    for chunk in (0..PODS).collect::<Vec<_>>().chunks(wave) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let mut c = client(socket).await;
            let config = pod(i, tag);
            tasks.push(tokio::spawn(async move {
                timed(c.run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                }))
                .await
            }));
        }
        for t in tasks {
            let (r, d) = t.await.expect("task");
            ids.push(r.expect("RunPodSandbox").into_inner().pod_sandbox_id);
            v.run.push(d);
        }
    }
    v.wall[0] = start.elapsed();
    between();
    for (verb, slot) in [(1, 1usize), (2, 2), (3, 3)] {
        let start = Instant::now();
        for chunk in ids.chunks(wave) {
            let mut tasks = Vec::new();
            for id in chunk {
                let mut c = client(socket).await;
                let id = id.clone();
                tasks.push(tokio::spawn(async move {
                    match verb {
                        1 => {
                            timed(async {
                                c.pod_sandbox_status(PodSandboxStatusRequest {
                                    pod_sandbox_id: id,
                                    verbose: false,
                                })
                                .await
                                .map(|_| ())
                            })
                            .await
                        }
                        2 => {
                            timed(async {
                                c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                                    .await
                                    .map(|_| ())
                            })
                            .await
                        }
                        _ => {
                            timed(async {
                                c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                                    .await
                                    .map(|_| ())
                            })
                            .await
                        }
                    }
                }));
            }
            for t in tasks {
                let (r, d) = t.await.expect("task");
                r.expect("pod verb");
                match verb {
                    1 => v.status.push(d),
                    2 => v.stop.push(d),
                    _ => v.remove.push(d),
                }
            }
        }
        v.wall[slot] = start.elapsed();
    }
    v
}

/// Processes called `name` whose command line names `dir`: this run's own,
/// not what other runs left on the machine.
fn pids_of(name: &str, dir: &Path) -> Vec<u32> {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(format!("{name}.*{}", dir.display()))
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Pause processes (named `pause`) whose parent is one of `shims`: this
/// run's pods', whichever runtime made them.
fn pauses_of(shims: &[u32]) -> Vec<u32> {
    berth_bench::all_pids()
        .into_iter()
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let named = stat.contains("(pause)");
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            named && parent.is_some_and(|p| shims.contains(&p))
        })
        .collect()
}

fn median_rss(pids: &[u32]) -> u64 {
    let mut v: Vec<u64> = pids
        .iter()
        .map(|p| rss_kib(*p))
        .filter(|r| *r > 0)
        .collect();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The floor, step by step, for `n` pods.
async fn floor(pause_rootfs: &Path, work: &Path, n: usize) -> [Samples; 4] {
    let ipam = work.join("floor-ipam");
    let list = NetworkList::load(&{
        let f = work.join("floor.conflist");
        std::fs::write(
            &f,
            conflist("bfloor0", "10.93.0.0/16", &ipam, false).to_string(),
        )
        .expect("conflist");
        f
    })
    .expect("conflist");
    let plugins = Plugins {
        bin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
        timeout: Duration::from_secs(60),
    };
    let root = work.join("runc-root");
    let (mut netns_t, mut add_t, mut del_t, mut runc_t) = (vec![], vec![], vec![], vec![]);
    let start = Instant::now();
    for i in 0..n {
        let name = format!("berthfloor{i}");
        let t = Instant::now();
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip")
            .success());
        netns_t.push(t.elapsed());
        let a = Attachment {
            container_id: format!("floor{i}"),
            netns: PathBuf::from(format!("/run/netns/{name}")),
            ifname: "eth0".into(),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            port_mappings: vec![],
            bandwidth: None,
            ip_ranges: vec![],
        };
        let t = Instant::now();
        let result = plugins.add(&list, &a).await.expect("CNI ADD");
        add_t.push(t.elapsed());

        let bundle = work.join(format!("bundle{i}"));
        std::fs::create_dir_all(&bundle).expect("bundle");
        let config = berth_actors::sandbox::messages::PodConfig::default();
        let netns = a.netns.clone();
        let spec = berth_actors::sandbox::spec::PauseSpec {
            config: &config,
            rootfs: pause_rootfs,
            hostname: "floor",
            netns: Some(&netns),
            cgroups_path: format!("/berth-floor/{i}"),
        }
        .build()
        .expect("spec");
        spec.save(bundle.join("config.json")).expect("config.json");
        let id = format!("floor{i}");
        let t = Instant::now();
        let ok = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("runc run");
        assert!(ok.success(), "runc run -d");
        let run_d = t.elapsed();
        let t = Instant::now();
        let ok = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["delete", "-f", &id])
            .status()
            .expect("runc delete");
        assert!(ok.success(), "runc delete");
        runc_t.push(run_d + t.elapsed());

        let t = Instant::now();
        plugins.del(&list, &a, &result).await.expect("CNI DEL");
        del_t.push(t.elapsed());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
    let _ = Command::new("ip").args(["link", "del", "bfloor0"]).status();
    let wall = start.elapsed();
    [
        Samples::new("floor: ip netns add", netns_t, wall),
        Samples::new("floor: CNI ADD by hand", add_t, wall),
        Samples::new("floor: CNI DEL by hand", del_t, wall),
        Samples::new("floor: runc run -d + delete (pause)", runc_t, wall),
    ]
}

fn ratio_line(name: &str, berth: &Samples, other: &Samples) {
    println!(
        "{name}: p50 {:.1} ms vs {:.1} ms = {:.2}×",
        berth.p50().as_secs_f64() * 1e3,
        other.p50().as_secs_f64() * 1e3,
        berth.p50().as_secs_f64() / other.p50().as_secs_f64().max(1e-9)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let work = tempfile::Builder::new()
        .prefix("berth-bench-pods-")
        .tempdir()
        .expect("tempdir");
    let mut d = Daemon::configure_logging("", "warn");
    let ipam = d.dir.path().join("ipam");
    std::fs::write(
        d.cni_dir().join("10-bench.conflist"),
        conflist("bbench0", "10.92.0.0/16", &ipam, false).to_string(),
    )
    .expect("conflist");
    d.masquerade(&["10.92.0.0/16"]);
    d.spawn();

    // Warm up: the first pod makes the sandbox image.
    let mut rt = client(&d.cri_socket()).await;
    let warm = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod(999, "warm")),
            runtime_handler: String::new(),
        })
        .await
        .expect("warm-up pod")
        .into_inner()
        .pod_sandbox_id;
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: warm.clone(),
    })
    .await
    .expect("stop");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: warm,
    })
    .await
    .expect("remove");

    let serial = lifecycle(&d.cri_socket(), "s", 1, || {})
        .await
        .samples("berth", "serial");
    let (mut berthd_kib, mut shim_kib, mut pause_kib) = (0, 0, 0);
    let berthd_pid = d.pid();
    let wave = lifecycle(&d.cri_socket(), "w", WAVE, || {
        berthd_kib = rss_kib(berthd_pid);
        let shims = pids_of("berth-shim", d.dir.path());
        shim_kib = median_rss(&shims);
        pause_kib = median_rss(&pauses_of(&shims));
    })
    .await
    .samples("berth", "10 at a time");

    let snapshots = d.root().join("snapshots");
    let pause_rootfs = std::fs::read_dir(&snapshots)
        .expect("snapshots")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("pause").is_file())
        .expect("the sandbox image's snapshot");
    let floor = floor(&pause_rootfs, work.path(), PODS).await;

    let reg = Registry::start();
    let pause_bin = berth_tests::bin("berth-pause");
    let sandbox_image = push_pause(&reg, &pause_bin);
    let peer = Peer::start(&[
        "--sandbox-image".into(),
        sandbox_image.clone(),
        "--subnet".into(),
        "10.78.0.0/16".into(),
        "--mirror".into(),
        format!("{}={}", reg.host(), reg.url()),
    ]);
    let mut peer_rows: Option<([Samples; 4], [Samples; 4])> = None;
    let mut peer_plain: Option<[Samples; 4]> = None;
    let (mut containerd_kib, mut cshim_kib, mut cpause_kib) = (0, 0, 0);
    if let Some(p) = &peer {
        let mut images = ImageServiceClient::new(berth_tests::connect(&p.socket()).await);
        images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: sandbox_image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("containerd pulls the pause image");
        let s = lifecycle(&p.socket(), "cs", 1, || {})
            .await
            .samples("containerd", "serial");
        let pid = p.pid();
        let w = lifecycle(&p.socket(), "cw", WAVE, || {
            containerd_kib = rss_kib(pid);
            let shims = pids_of("containerd-shim", p.dir.path());
            cshim_kib = median_rss(&shims);
            cpause_kib = median_rss(&pauses_of(&shims));
        })
        .await
        .samples("containerd", "10 at a time");
        peer_rows = Some((s, w));
        // The same network without the bridge plugin's per-pod ipMasq
        // (and so with no NAT at all for containerd's pods): what
        // containerd does when the plugins run no iptables.
        let conf = p.dir.path().join("net.d/10-peer.conflist");
        let text = std::fs::read_to_string(&conf).expect("the peer's conflist");
        std::fs::write(&conf, text.replace("\"ipMasq\": true", "\"ipMasq\": false"))
            .expect("the peer's conflist");
        // containerd watches its CNI directory and reloads.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let plain = lifecycle(&p.socket(), "cn", 1, || {})
            .await
            .samples("containerd (ipMasq off: no NAT)", "serial");
        peer_plain = Some(plain);
    } else {
        println!("(containerd peer not available)");
    }

    let mut rows: Vec<&Samples> = serial.iter().chain(wave.iter()).collect();
    rows.extend(floor.iter());
    if let Some((s, w)) = &peer_rows {
        rows.extend(s.iter());
        rows.extend(w.iter());
    }
    if let Some(p) = &peer_plain {
        rows.extend(p.iter());
    }
    table(&format!("pod lifecycle, {PODS} pods"), &rows, &[]);
    println!();
    if let Some((s, w)) = &peer_rows {
        for i in [0usize, 2] {
            ratio_line(&serial[i].name, &serial[i], &s[i]);
            ratio_line(&wave[i].name, &wave[i], &w[i]);
        }
    }
    if let Some(p) = &peer_plain {
        for i in [0usize, 2] {
            ratio_line(
                &format!("{} against containerd with ipMasq off", serial[i].name),
                &serial[i],
                &p[i],
            );
        }
    }
    let floor_run = floor[0].p50() + floor[1].p50() + floor[3].p50() / 2;
    println!(
        "floor for a pod (netns + CNI ADD + runc run -d, one after another): {:.1} ms; berth RunPodSandbox p50 {:.1} ms",
        floor_run.as_secs_f64() * 1e3,
        serial[0].p50().as_secs_f64() * 1e3
    );
    println!(
        "resident memory with {PODS} pods: berthd {} KiB, one berth-shim {} KiB, one pause {} KiB (medians); containerd {} KiB, one containerd-shim {} KiB, one pause {} KiB (the same pause program)",
        berthd_kib, shim_kib, pause_kib, containerd_kib, cshim_kib, cpause_kib
    );
    d.kill9();
    // The bridges this run made (containerd's goes with its peer).
    let _ = Command::new("ip").args(["link", "del", "bbench0"]).status();
}
