//! Streaming: Exec of `true` (the Exec RPC, the SPDY connection, the exit
//! status) round trip, p50/p99; port-forward throughput for one 1 GiB
//! download and for 100 parallel connections of 10 MiB; berthd's memory
//! before and after 1,000 exec sessions. Beside
//!
//! - the floor, in the same run: `runc exec` of `true` into the same
//!   container; a direct TCP connection from the node into the pod's
//!   network (the pod's IP) for port-forward;
//! - the peer: containerd's CRI and its streaming server (Debian's
//!   package, started by shared/peers/containerd-peer), with the same
//!   image, pod and client.
//!
//! The server in the pod is busybox `nc -ll` running `dd` from /dev/zero
//! for each connection: it says `ready`, then sends as many bytes as the
//! line it reads asks for. Its listen backlog is 1, so connections are
//! opened one after another (each waits for `ready`), and only then do
//! all of them ask for their bytes at once.
//!
//!   bench/run streaming

use berth_bench::{berth_on_bridge, busybox_registry, rss_kib, table, PodPeer, Samples};
use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use berth_stream::client::{remote_command_spdy, CommandIo, PortForward};
use bytes::Bytes;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// Exec round trips measured.
const EXECS: usize = 200;
/// Exec sessions before memory is looked at again.
const MEMORY_EXECS: usize = 1000;
/// The single download.
const BIG: u64 = 1 << 30;
/// Downloads of it.
const BIG_RUNS: usize = 3;
/// Parallel connections, and what each downloads.
const PARALLEL: usize = 100;
const EACH: u64 = 10 << 20;
/// The port the pod's server listens on.
const PORT: u16 = 9000;

const BRIDGE: &str = "bstream0";
const SUBNET: &str = "10.96.0.0/16";

const SERVER: &str = "exec nc -ll -p 9000 -e sh -c 'echo ready; read n; dd if=/dev/zero bs=65536 count=$((n/65536)) 2>/dev/null'";

struct Target {
    who: &'static str,
    rt: RuntimeServiceClient<Channel>,
    pod: String,
    exec_ctr: String,
    pod_ip: String,
}

async fn setup(
    who: &'static str,
    socket: &Path,
    image: &str,
    logs: &Path,
) -> Result<Target, String> {
    let mut rt = RuntimeServiceClient::new(berth_tests::connect(socket).await);
    berth_bench::pull(socket, image)
        .await
        .map_err(|e| format!("{who}: {e}"))?;
    let pod_cfg = berth_bench::bench_pod("stream-bench", who, logs);
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|e| format!("{who}: RunPodSandbox: {e}"))?
        .into_inner()
        .pod_sandbox_id;
    let mut ids = Vec::new();
    for (name, cmd) in [
        ("exec", vec!["sleep", "100000"]),
        ("source", vec!["sh", "-c", SERVER]),
    ] {
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(berth_bench::bench_container(name, image, &cmd)),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await
            .map_err(|e| format!("{who}: CreateContainer {name}: {e}"))?
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|e| format!("{who}: StartContainer {name}: {e}"))?;
        ids.push(id);
    }
    let pod_ip = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .map_err(|e| format!("{who}: PodSandboxStatus: {e}"))?
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    // The server answers once it listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    while open(&pod_ip, None).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "{who}: the pod's server at {pod_ip}:{PORT} never answered"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Target {
        who,
        rt,
        pod,
        exec_ctr: ids[0].clone(),
        pod_ip,
    })
}

/// A connection to the pod's server that said `ready`: direct, or
/// forwarded by a port-forward session.
enum Conn {
    Direct(tokio::net::TcpStream),
    Forwarded(berth_stream::client::Forwarded),
}

/// Opens a connection and waits for the server's `ready`.
async fn open(ip: &str, pf: Option<&PortForward>) -> Result<Conn, String> {
    let mut seen = Vec::new();
    match pf {
        None => {
            let mut c = tokio::net::TcpStream::connect((ip, PORT))
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            while !seen.ends_with(b"ready\n") {
                let k = c.read(&mut buf).await.map_err(|e| e.to_string())?;
                if k == 0 {
                    return Err("closed before ready".into());
                }
                seen.extend_from_slice(&buf[..k]);
            }
            Ok(Conn::Direct(c))
        }
        Some(pf) => {
            let mut f = pf.connect(PORT).await.map_err(|e| e.to_string())?;
            while !seen.ends_with(b"ready\n") {
                match f.data.recv().await {
                    Some(b) => seen.extend_from_slice(&b),
                    None => {
                        let err = f.error.read_to_end(4096).await;
                        return Err(format!(
                            "closed before ready: {}",
                            String::from_utf8_lossy(&err)
                        ));
                    }
                }
            }
            Ok(Conn::Forwarded(f))
        }
    }
}

/// Asks for `n` bytes and takes them all.
async fn download(conn: Conn, n: u64) -> Result<u64, String> {
    let mut got = 0u64;
    match conn {
        Conn::Direct(mut c) => {
            c.write_all(format!("{n}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match c.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(k) => got += k as u64,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Conn::Forwarded(mut f) => {
            f.data
                .send(Bytes::from(format!("{n}\n")))
                .await
                .map_err(|e| e.to_string())?;
            while let Some(b) = f.data.recv().await {
                got += b.len() as u64;
            }
            // As client-go does once the pod's side ended.
            f.data
                .sender()
                .reset(berth_stream::spdy::frame::rst::CANCEL)
                .await;
            let err = f.error.read_to_end(4096).await;
            if !err.is_empty() {
                return Err(String::from_utf8_lossy(&err).to_string());
            }
        }
    }
    if got == n {
        Ok(got)
    } else {
        Err(format!("got {got} of {n} bytes"))
    }
}

async fn port_forward(t: &mut Target) -> Result<PortForward, String> {
    let url =
        t.rt.port_forward(PortForwardRequest {
            pod_sandbox_id: t.pod.clone(),
            port: vec![],
        })
        .await
        .map_err(|e| format!("{}: PortForward: {e}", t.who))?
        .into_inner()
        .url;
    PortForward::spdy(&url)
        .await
        .map_err(|e| format!("{}: port-forward session: {e}", t.who))
}

async fn exec_true(t: &mut Target) -> Result<(), String> {
    let url =
        t.rt.exec(ExecRequest {
            container_id: t.exec_ctr.clone(),
            cmd: vec!["true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
        .await
        .map_err(|e| format!("{}: Exec: {e}", t.who))?
        .into_inner()
        .url;
    let (_, out) = remote_command_spdy(
        &url,
        CommandIo {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("{}: exec stream: {e}", t.who))?;
    match out.exit_code() {
        Some(0) => Ok(()),
        other => Err(format!("{}: exec of true exited {other:?}", t.who)),
    }
}

async fn exec_rtt(t: &mut Target) -> Result<Samples, String> {
    let mut lat = Vec::with_capacity(EXECS);
    let start = Instant::now();
    for _ in 0..EXECS {
        let s = Instant::now();
        exec_true(t).await?;
        lat.push(s.elapsed());
    }
    Ok(Samples::new(
        format!("{} exec true round trip", t.who),
        lat,
        start.elapsed(),
    ))
}

/// Downloads of 1 GiB, then 100 at once of 10 MiB (opened one by one,
/// then all asked at once): through `pf`, or direct (None).
async fn throughput(
    name: &str,
    ip: &str,
    pf: Option<Arc<PortForward>>,
) -> Result<(Samples, Samples), String> {
    let mut lat = Vec::new();
    let start = Instant::now();
    for _ in 0..BIG_RUNS {
        let conn = open(ip, pf.as_deref()).await?;
        let s = Instant::now();
        download(conn, BIG).await?;
        lat.push(s.elapsed());
    }
    let big = Samples::new(format!("{name} 1 GiB"), lat, start.elapsed());
    let mut conns = Vec::with_capacity(PARALLEL);
    for _ in 0..PARALLEL {
        conns.push(open(ip, pf.as_deref()).await?);
    }
    let start = Instant::now();
    let all: Vec<_> = conns
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                let s = Instant::now();
                download(c, EACH).await.map(|_| s.elapsed())
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in all {
        lat.push(t.await.map_err(|e| e.to_string())??);
    }
    let parallel = Samples::new(format!("{name} {PARALLEL}×10 MiB"), lat, start.elapsed());
    Ok((big, parallel))
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

/// `runc exec` of `true` into the same container, as the floor.
fn runc_exec_floor(root: &Path, id: &str) -> Samples {
    let mut lat = Vec::with_capacity(EXECS);
    let start = Instant::now();
    for _ in 0..EXECS {
        let s = Instant::now();
        let ok = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["exec", id, "true"])
            .status()
            .is_ok_and(|st| st.success());
        if !ok {
            eprintln!("floor: runc exec failed");
            break;
        }
        lat.push(s.elapsed());
    }
    Samples::new("floor runc exec true", lat, start.elapsed())
}

struct Measured {
    exec: Samples,
    big: Samples,
    parallel: Samples,
}

async fn measure(t: &mut Target) -> Result<Measured, String> {
    let exec = exec_rtt(t).await?;
    let pf = Arc::new(port_forward(t).await?);
    let (big, parallel) = throughput(
        &format!("{} port-forward", t.who),
        &t.pod_ip,
        Some(pf.clone()),
    )
    .await?;
    pf.close().await;
    Ok(Measured {
        exec,
        big,
        parallel,
    })
}

#[tokio::main]
async fn main() {
    let (reg, image, _) = busybox_registry();

    // berth.
    let mut d = berth_on_bridge(&reg, BRIDGE, SUBNET);
    let mut berth = setup("berth", &d.cri_socket(), &image, &d.dir.path().join("logs"))
        .await
        .expect("berth set-up");
    let berth_m = measure(&mut berth).await.expect("berth");
    let (direct_big, direct_parallel) = throughput("direct TCP", &berth.pod_ip, None)
        .await
        .expect("direct");
    let floor_exec = runc_exec_floor(&d.dir.path().join("run/runc"), &berth.exec_ctr);
    // Memory: after the runs above, then after 1,000 more exec sessions,
    // then after a rest.
    let pid = d.pid();
    let before = rss_kib(pid);
    let mem_start = Instant::now();
    for _ in 0..MEMORY_EXECS {
        exec_true(&mut berth).await.expect("exec");
    }
    let mem_wall = mem_start.elapsed();
    let after = rss_kib(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rested = rss_kib(pid);
    let _ = berth
        .rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: berth.pod.clone(),
        })
        .await;
    let _ = berth
        .rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: berth.pod.clone(),
        })
        .await;
    let _ = d.terminate(Duration::from_secs(30));
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();

    // containerd.
    let mut containerd = None;
    if let Some(p) = PodPeer::start(&reg).await {
        match setup("containerd", &p.peer().socket(), &image, &p.logs()).await {
            Ok(mut t) => match measure(&mut t).await {
                Ok(m) => containerd = Some(m),
                Err(e) => eprintln!("{e}"),
            },
            Err(e) => eprintln!("{e}"),
        }
    }

    // Exec.
    let mut rows = vec![&berth_m.exec, &floor_exec];
    let mut refs = vec![&floor_exec];
    if let Some(c) = &containerd {
        rows.push(&c.exec);
        refs.push(&c.exec);
    }
    table(
        "exec of `true`: Exec RPC + SPDY connection + exit status",
        &rows,
        &refs,
    );

    // Port-forward throughput.
    println!("\n## port-forward throughput (busybox nc + dd in the pod)\n");
    println!(
        "{:<40} {:>12} {:>14} {:>14}",
        "path", "MiB/s", "× direct", "× containerd"
    );
    let line = |name: &str, mibs: f64, direct: f64, peer: Option<f64>| {
        println!(
            "{:<40} {:>12.0} {:>14.2} {:>14}",
            name,
            mibs,
            mibs / direct,
            peer.map_or("-".to_string(), |p| format!("{:.2}", mibs / p))
        );
    };
    let big = |s: &Samples| mib_per_s(BIG, s.p50());
    let par = |s: &Samples| mib_per_s(EACH * PARALLEL as u64, s.wall);
    let d_big = big(&direct_big);
    let d_par = par(&direct_parallel);
    let c_big = containerd.as_ref().map(|c| big(&c.big));
    let c_par = containerd.as_ref().map(|c| par(&c.parallel));
    line("direct TCP, 1 GiB (p50 of 3)", d_big, d_big, c_big);
    line("berth port-forward, 1 GiB", big(&berth_m.big), d_big, c_big);
    if let Some(c) = c_big {
        line("containerd port-forward, 1 GiB", c, d_big, c_big);
    }
    line(
        &format!("direct TCP, {PARALLEL}×10 MiB at once"),
        d_par,
        d_par,
        c_par,
    );
    line(
        &format!("berth port-forward, {PARALLEL}×10 MiB"),
        par(&berth_m.parallel),
        d_par,
        c_par,
    );
    if let Some(c) = c_par {
        line(
            &format!("containerd port-forward, {PARALLEL}×10 MiB"),
            c,
            d_par,
            c_par,
        );
    }
    table(
        "port-forward, per connection",
        &[&berth_m.parallel, &direct_parallel],
        &[&direct_parallel],
    );

    println!("\n## berthd memory (VmRSS) around {MEMORY_EXECS} exec sessions\n");
    println!("before: {before} KiB; right after: {after} KiB; after 5 s: {rested} KiB");
    println!(
        "({MEMORY_EXECS} sessions in {:.1} s; after 5 s: {:+} KiB from before)",
        mem_wall.as_secs_f64(),
        rested as i64 - before as i64
    );
}
