//! Container lifecycle: CreateContainer, StartContainer, ContainerStatus,
//! StopContainer and RemoveContainer over 100 containers (`sleep 1000` in a
//! busybox image, one pod per runtime), serially and 10 at a time, and the
//! whole create → start → stop → remove cycle of each container; ExecSync
//! round trips (`true`); how long an exit takes to reach a GetContainerEvents
//! subscriber (50 containers running `true`: from the exit's time, the
//! container's `finished_at`, to the STOPPED event's arrival);
//! ListContainers and ListContainerStats with 200 containers in the pod.
//! Beside
//!
//! - the floor, measured in the same run: bare `runc create`, `runc start`,
//!   `runc kill KILL` and `runc delete` of an equivalent bundle (the same
//!   busybox layer extracted by `tar`, `sleep 1000`);
//! - the peer: containerd's CRI from Debian's package (started with
//!   shared/peers/containerd-peer), pulling the same image from the same
//!   local registry, with berth's pause program as its sandbox image.
//!
//!   cargo build --release --workspace --bins
//!   cargo bench -p berth-bench --bench container_lifecycle

use berth_bench::{
    bench_pod, berth_on_bridge, busybox_registry, runc_floor, sleeper, table, PodPeer, Samples,
};
use berth_protocol::cri::runtime_service_client::RuntimeServiceClient;
use berth_protocol::cri::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Containers per lifecycle run.
const CONTAINERS: usize = 100;
/// Containers at a time in the concurrent run.
const WAVE: usize = 10;
/// ExecSync round trips.
const EXECS: usize = 200;
/// Containers whose exit events are timed.
const EVENTS: usize = 50;
/// Containers in the pod for the list calls.
const LISTED: usize = 200;
/// Calls of each list RPC.
const LIST_CALLS: usize = 500;
/// StopContainer's grace period (seconds).
const STOP_TIMEOUT: i64 = 10;

/// berth's own network for this benchmark.
const BRIDGE: &str = "bctr0";
const SUBNET: &str = "10.95.0.0/16";

/// One runtime under test: its CRI socket, the image reference it pulled,
/// and its pod.
struct Target {
    who: &'static str,
    socket: PathBuf,
    image: String,
    pod_id: String,
    pod: PodSandboxConfig,
}

async fn client(socket: &Path) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(berth_tests::connect(socket).await)
}

/// A failed call, said precisely: who, which RPC, the gRPC code and message.
fn failed(who: &str, rpc: &str, what: &str, e: tonic::Status) -> String {
    format!(
        "{who}: {rpc} ({what}) failed: {:?}: {}",
        e.code(),
        e.message()
    )
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let v = f.await;
    (v, t.elapsed())
}

async fn create(
    c: &mut RuntimeServiceClient<Channel>,
    who: &str,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<(String, Duration), String> {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let (r, d) = timed(c.create_container(CreateContainerRequest {
        pod_sandbox_id: pod_id.into(),
        config: Some(config),
        sandbox_config: Some(pod.clone()),
    }))
    .await;
    let id = r
        .map_err(|e| failed(who, "CreateContainer", &name, e))?
        .into_inner()
        .container_id;
    Ok((id, d))
}

async fn start(
    c: &mut RuntimeServiceClient<Channel>,
    who: &str,
    id: &str,
) -> Result<Duration, String> {
    let (r, d) = timed(c.start_container(StartContainerRequest {
        container_id: id.into(),
    }))
    .await;
    r.map_err(|e| failed(who, "StartContainer", id, e))?;
    Ok(d)
}

async fn stop(
    c: &mut RuntimeServiceClient<Channel>,
    who: &str,
    id: &str,
) -> Result<Duration, String> {
    let (r, d) = timed(c.stop_container(StopContainerRequest {
        container_id: id.into(),
        timeout: STOP_TIMEOUT,
    }))
    .await;
    r.map_err(|e| failed(who, "StopContainer", id, e))?;
    Ok(d)
}

async fn remove(
    c: &mut RuntimeServiceClient<Channel>,
    who: &str,
    id: &str,
) -> Result<Duration, String> {
    let (r, d) = timed(c.remove_container(RemoveContainerRequest {
        container_id: id.into(),
    }))
    .await;
    r.map_err(|e| failed(who, "RemoveContainer", id, e))?;
    Ok(d)
}

/// ContainerStatus, which must say RUNNING (it comes after StartContainer).
async fn status_running(
    c: &mut RuntimeServiceClient<Channel>,
    who: &str,
    id: &str,
) -> Result<Duration, String> {
    let (r, d) = timed(c.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    }))
    .await;
    let st = r
        .map_err(|e| failed(who, "ContainerStatus", id, e))?
        .into_inner()
        .status
        .ok_or_else(|| format!("{who}: ContainerStatus ({id}) answered without a status"))?;
    if st.state != ContainerState::ContainerRunning as i32 {
        return Err(format!(
            "{who}: ContainerStatus ({id}) after StartContainer: state {:?} (exit code {}, reason {:?}, message {:?}), expected RUNNING",
            ContainerState::try_from(st.state),
            st.exit_code,
            st.reason,
            st.message
        ));
    }
    Ok(d)
}

/// The latencies of one container's lifecycle: create, start, status,
/// stop, remove.
type Cycle = [Duration; 5];

async fn one_cycle(
    socket: PathBuf,
    who: &'static str,
    pod_id: String,
    pod: PodSandboxConfig,
    config: ContainerConfig,
) -> Result<Cycle, String> {
    let mut c = client(&socket).await;
    let (id, create_t) = create(&mut c, who, &pod_id, &pod, config).await?;
    let start_t = start(&mut c, who, &id).await?;
    let status_t = status_running(&mut c, who, &id).await?;
    let stop_t = stop(&mut c, who, &id).await?;
    let remove_t = remove(&mut c, who, &id).await?;
    Ok([create_t, start_t, status_t, stop_t, remove_t])
}

/// Latencies of the five verbs and of each container's cycle.
#[derive(Default)]
struct Steps {
    verbs: [Vec<Duration>; 5],
    cycle: Vec<Duration>,
    wall: Duration,
}

const VERBS: [&str; 5] = [
    "CreateContainer",
    "StartContainer",
    "ContainerStatus",
    "StopContainer",
    "RemoveContainer",
];

impl Steps {
    fn push(&mut self, c: Cycle) {
        for (v, d) in self.verbs.iter_mut().zip(c) {
            v.push(d);
        }
        // The cycle: create + start + stop + remove (status is not part
        // of a container's life, only a look at it).
        self.cycle.push(c[0] + c[1] + c[3] + c[4]);
    }

    /// Five verb rows, then the cycle row.
    fn samples(self, who: &str, how: &str) -> Vec<Samples> {
        let mut rows: Vec<Samples> = VERBS
            .iter()
            .zip(self.verbs)
            .map(|(verb, l)| Samples::new(format!("{who} {verb}, {how}"), l, self.wall))
            .collect();
        rows.push(Samples::new(
            format!("{who} cycle, {how}"),
            self.cycle,
            self.wall,
        ));
        rows
    }
}

/// `CONTAINERS` full cycles, `wave` containers at a time (each wave's
/// containers go through their cycles side by side).
async fn lifecycle(t: &Target, tag: &str, wave: usize) -> Result<Steps, String> {
    let mut steps = Steps::default();
    let start = Instant::now();
    for chunk in (0..CONTAINERS).collect::<Vec<_>>().chunks(wave) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| {
                tokio::spawn(one_cycle(
                    t.socket.clone(),
                    t.who,
                    t.pod_id.clone(),
                    t.pod.clone(),
                    sleeper(&format!("{tag}-{i}"), &t.image),
                ))
            })
            .collect();
        let mut first_error = None;
        for task in tasks {
            match task.await {
                Ok(Ok(c)) => steps.push(c),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(format!("{}: task failed: {e}", t.who));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    steps.wall = start.elapsed();
    Ok(steps)
}

/// ExecSync `true` against one running container, `EXECS` times.
async fn exec_round_trips(t: &Target) -> Result<Samples, String> {
    let mut c = client(&t.socket).await;
    let (id, _) = create(
        &mut c,
        t.who,
        &t.pod_id,
        &t.pod,
        sleeper("exec-target", &t.image),
    )
    .await?;
    start(&mut c, t.who, &id).await?;
    let mut latencies = Vec::with_capacity(EXECS);
    let begin = Instant::now();
    let mut result = Ok(());
    for _ in 0..EXECS {
        let (r, d) = timed(c.exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 10,
        }))
        .await;
        match r {
            Ok(out) if out.get_ref().exit_code == 0 => latencies.push(d),
            Ok(out) => {
                let out = out.into_inner();
                result = Err(format!(
                    "{}: ExecSync `true` exited {} (stderr {:?})",
                    t.who,
                    out.exit_code,
                    String::from_utf8_lossy(&out.stderr)
                ));
                break;
            }
            Err(e) => {
                result = Err(failed(t.who, "ExecSync", "true", e));
                break;
            }
        }
    }
    let wall = begin.elapsed();
    // Clean up whatever happened above.
    let stopped = stop(&mut c, t.who, &id).await;
    let removed = remove(&mut c, t.who, &id).await;
    result?;
    stopped?;
    removed?;
    Ok(Samples::new(
        format!("{} ExecSync `true`, 1 client", t.who),
        latencies,
        wall,
    ))
}

fn unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Exits to their STOPPED events: `EVENTS` containers running `true`, one
/// after another, each timed from its exit (the `finished_at` the event
/// carries) to the event's arrival. None when the runtime has no events.
async fn event_latencies(t: &Target) -> Result<Option<Samples>, String> {
    let mut c = client(&t.socket).await;
    let mut events = match c.get_container_events(GetEventsRequest {}).await {
        Ok(s) => s.into_inner(),
        Err(e) if e.code() == tonic::Code::Unimplemented => return Ok(None),
        Err(e) => return Err(failed(t.who, "GetContainerEvents", "", e)),
    };
    let mut latencies = Vec::with_capacity(EVENTS);
    let begin = Instant::now();
    for i in 0..EVENTS {
        let mut config = sleeper(&format!("exits-{i}"), &t.image);
        config.command = vec!["true".into()];
        let (id, _) = create(&mut c, t.who, &t.pod_id, &t.pod, config).await?;
        start(&mut c, t.who, &id).await?;
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .map_err(|_| format!("{}: no STOPPED event for {id} within 10 s", t.who))?
                .map_err(|e| failed(t.who, "GetContainerEvents", "stream", e))?
                .ok_or_else(|| format!("{}: the event stream ended", t.who))?;
            let stopped = ContainerEventType::ContainerStoppedEvent as i32;
            if e.container_id == id && e.container_event_type == stopped {
                let arrived = unix_nanos();
                let finished = e
                    .containers_statuses
                    .iter()
                    .find(|s| s.id == id)
                    .map_or(0, |s| s.finished_at);
                if finished > 0 {
                    latencies.push(Duration::from_nanos((arrived - finished).max(0) as u64));
                }
                break;
            }
        }
        remove(&mut c, t.who, &id).await?;
    }
    Ok(Some(Samples::new(
        format!("{} exit → STOPPED event", t.who),
        latencies,
        begin.elapsed(),
    )))
}

/// What the list section measured.
struct Lists {
    list: Samples,
    /// None when the runtime answered UNIMPLEMENTED.
    stats: Option<Samples>,
    stats_listed: usize,
}

/// Creates (and starts) `LISTED` containers in the pod, `WAVE` at a time,
/// then calls ListContainers and ListContainerStats `LIST_CALLS` times
/// each; stops and removes the containers again.
async fn lists(t: &Target) -> Result<Lists, String> {
    let mut ids = Vec::new();
    let made = populate(t, &mut ids).await;
    let measured = match made {
        Ok(()) => list_calls(t).await,
        Err(e) => Err(e),
    };
    // Stop and remove every container made, whatever happened.
    let mut cleanup = Ok(());
    for chunk in ids.chunks(WAVE) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|id| {
                let (socket, who, id) = (t.socket.clone(), t.who, id.clone());
                tokio::spawn(async move {
                    let mut c = client(&socket).await;
                    stop(&mut c, who, &id).await?;
                    remove(&mut c, who, &id).await?;
                    Ok::<(), String>(())
                })
            })
            .collect();
        for task in tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => cleanup = cleanup.and(Err(e)),
                Err(e) => cleanup = cleanup.and(Err(format!("{}: task failed: {e}", t.who))),
            }
        }
    }
    let lists = measured?;
    cleanup?;
    Ok(lists)
}

async fn populate(t: &Target, ids: &mut Vec<String>) -> Result<(), String> {
    for chunk in (0..LISTED).collect::<Vec<_>>().chunks(WAVE) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| {
                let (socket, who) = (t.socket.clone(), t.who);
                let (pod_id, pod) = (t.pod_id.clone(), t.pod.clone());
                let config = sleeper(&format!("listed-{i}"), &t.image);
                tokio::spawn(async move {
                    let mut c = client(&socket).await;
                    let (id, _) = create(&mut c, who, &pod_id, &pod, config).await?;
                    let started = start(&mut c, who, &id).await.map(|_| ());
                    Ok::<_, String>((id, started))
                })
            })
            .collect();
        let mut first_error = None;
        for task in tasks {
            match task.await {
                Ok(Ok((id, started))) => {
                    ids.push(id);
                    if let Err(e) = started {
                        first_error.get_or_insert(e);
                    }
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(format!("{}: task failed: {e}", t.who));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    Ok(())
}

async fn list_calls(t: &Target) -> Result<Lists, String> {
    let mut c = client(&t.socket).await;
    let mut latencies = Vec::with_capacity(LIST_CALLS);
    let begin = Instant::now();
    for _ in 0..LIST_CALLS {
        let (r, d) = timed(c.list_containers(ListContainersRequest { filter: None })).await;
        let n = r
            .map_err(|e| failed(t.who, "ListContainers", "no filter", e))?
            .into_inner()
            .containers
            .len();
        if n < LISTED {
            return Err(format!(
                "{}: ListContainers listed {n} containers, expected at least {LISTED}",
                t.who
            ));
        }
        latencies.push(d);
    }
    let list = Samples::new(
        format!("{} ListContainers, {LISTED} containers", t.who),
        latencies,
        begin.elapsed(),
    );

    let mut latencies = Vec::with_capacity(LIST_CALLS);
    let mut stats_listed = 0;
    let begin = Instant::now();
    for _ in 0..LIST_CALLS {
        let (r, d) =
            timed(c.list_container_stats(ListContainerStatsRequest { filter: None })).await;
        match r {
            Ok(r) => stats_listed = r.into_inner().stats.len(),
            Err(e) if e.code() == tonic::Code::Unimplemented => {
                return Ok(Lists {
                    list,
                    stats: None,
                    stats_listed: 0,
                })
            }
            Err(e) => return Err(failed(t.who, "ListContainerStats", "no filter", e)),
        }
        latencies.push(d);
    }
    let stats = Samples::new(
        format!("{} ListContainerStats, {LISTED} containers", t.who),
        latencies,
        begin.elapsed(),
    );
    Ok(Lists {
        list,
        stats: Some(stats),
        stats_listed,
    })
}

/// Everything measured against one runtime; what failed, said precisely.
#[derive(Default)]
struct Measured {
    serial: Vec<Samples>,
    wave: Vec<Samples>,
    exec: Option<Samples>,
    events: Option<Samples>,
    lists: Option<Lists>,
    errors: Vec<String>,
}

impl Measured {
    fn cycle(&self, serial: bool) -> Option<&Samples> {
        let rows = if serial { &self.serial } else { &self.wave };
        rows.last()
    }

    fn rows(&self) -> Vec<&Samples> {
        let mut rows: Vec<&Samples> = self.serial.iter().chain(self.wave.iter()).collect();
        rows.extend(self.exec.iter());
        rows.extend(self.events.iter());
        if let Some(l) = &self.lists {
            rows.push(&l.list);
            rows.extend(l.stats.iter());
        }
        rows
    }
}

/// Pulls the image, makes the pod, warms up with one cycle, then measures
/// every section; the pod is removed at the end.
async fn measure(who: &'static str, socket: &Path, image: &str, logs: &Path) -> Measured {
    let mut m = Measured::default();
    if let Err(e) = berth_bench::pull(socket, image).await {
        m.errors.push(format!("{who}: {e}"));
        return m;
    }
    std::fs::create_dir_all(logs).expect("log directory");
    let pod = bench_pod("ctr-bench", who, logs);
    let mut rt = client(socket).await;
    let pod_id = match rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
    {
        Ok(r) => r.into_inner().pod_sandbox_id,
        Err(e) => {
            m.errors.push(failed(who, "RunPodSandbox", "", e));
            return m;
        }
    };
    let t = Target {
        who,
        socket: socket.to_path_buf(),
        image: image.into(),
        pod_id,
        pod,
    };

    // Warm up: one whole cycle first (the first container may prepare
    // caches the others use).
    let warm = one_cycle(
        t.socket.clone(),
        who,
        t.pod_id.clone(),
        t.pod.clone(),
        sleeper("warm-up", image),
    )
    .await;
    match warm {
        Err(e) => m.errors.push(format!("{e} (warm-up cycle)")),
        Ok(_) => {
            match lifecycle(&t, "s", 1).await {
                Ok(s) => m.serial = s.samples(who, "serial"),
                Err(e) => m.errors.push(format!("{e} (serial cycles)")),
            }
            match lifecycle(&t, "w", WAVE).await {
                Ok(s) => m.wave = s.samples(who, "10 at a time"),
                Err(e) => m.errors.push(format!("{e} (cycles, 10 at a time)")),
            }
            match exec_round_trips(&t).await {
                Ok(s) => m.exec = Some(s),
                Err(e) => m.errors.push(e),
            }
            match event_latencies(&t).await {
                Ok(s) => m.events = s,
                Err(e) => m.errors.push(e),
            }
            match lists(&t).await {
                Ok(l) => m.lists = Some(l),
                Err(e) => m.errors.push(format!("{e} (with {LISTED} containers)")),
            }
        }
    }

    // The pod, and with it any container left behind by a failure.
    if let Err(e) = rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: t.pod_id.clone(),
        })
        .await
    {
        m.errors.push(failed(who, "StopPodSandbox", &t.pod_id, e));
    }
    if let Err(e) = rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: t.pod_id.clone(),
        })
        .await
    {
        m.errors.push(failed(who, "RemovePodSandbox", &t.pod_id, e));
    }
    m
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let work = tempfile::Builder::new()
        .prefix("berth-bench-ctrs-")
        .tempdir()
        .expect("tempdir");

    // The image, in a local registry both runtimes pull from.
    let (reg, image, layer_bytes) = busybox_registry();

    // berth.
    let mut d = berth_on_bridge(&reg, BRIDGE, SUBNET);
    let berth = measure("berth", &d.cri_socket(), &image, &d.dir.path().join("logs")).await;
    if !berth.errors.is_empty() {
        let log = d.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!("berthd's log, last lines:");
        for l in tail.iter().rev() {
            eprintln!("  {l}");
        }
    }
    let (status, _) = d.terminate(Duration::from_secs(30));
    if !status.success() {
        eprintln!("berthd exited with {status} after SIGTERM");
    }
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();

    // The floor.
    let floor = runc_floor(&layer_bytes, work.path(), CONTAINERS);

    // containerd.
    let containerd = match PodPeer::start(&reg).await {
        Some(p) => Some(measure("containerd", &p.peer().socket(), &image, &p.logs()).await),
        None => None,
    };

    // One table: every row, with ratios against the floor's cycle and
    // containerd's serial cycle (for a step, its share of that cycle).
    let mut rows = berth.rows();
    rows.extend(floor.iter());
    if let Some(c) = &containerd {
        rows.extend(c.rows());
    }
    let floor_cycle = floor.last().expect("floor cycle");
    let mut references = vec![floor_cycle];
    if let Some(c) = containerd.as_ref().and_then(|c| c.cycle(true)) {
        references.push(c);
    }
    table(
        &format!("container lifecycle, {CONTAINERS} containers (busybox `sleep 1000`)"),
        &rows,
        &references,
    );
    println!(
        "\n(the × columns divide each row's p50 by the floor's cycle p50 and by containerd's serial cycle p50)\n"
    );

    for serial in [true, false] {
        let how = if serial { "serial" } else { "10 at a time" };
        if let Some(b) = berth.cycle(serial) {
            match containerd.as_ref().and_then(|c| c.cycle(serial)) {
                Some(c) => println!(
                    "cycle p50 ({how}): berth {:.1} ms, containerd {:.1} ms = {:.2}×",
                    ms(b.p50()),
                    ms(c.p50()),
                    ratio(b.p50(), c.p50())
                ),
                None => println!("cycle p50 ({how}): berth {:.1} ms", ms(b.p50())),
            }
        }
    }
    if let Some(b) = berth.cycle(true) {
        println!(
            "cycle p50 against the floor: berth {:.1} ms, floor (runc create+start+kill+delete) {:.1} ms = {:.2}×",
            ms(b.p50()),
            ms(floor_cycle.p50()),
            ratio(b.p50(), floor_cycle.p50())
        );
    }
    // Like against like, verb by verb.
    if let Some(c) = &containerd {
        for (b, c) in berth
            .serial
            .iter()
            .zip(&c.serial)
            .chain(berth.wave.iter().zip(&c.wave))
            .chain(berth.exec.iter().zip(&c.exec))
            .chain(berth.events.iter().zip(&c.events))
        {
            println!(
                "{}: p50 {:.2} ms vs containerd {:.2} ms = {:.2}×",
                b.name,
                ms(b.p50()),
                ms(c.p50()),
                ratio(b.p50(), c.p50())
            );
        }
    }
    let peer_lists = containerd.as_ref().and_then(|c| c.lists.as_ref());
    match (&berth.lists, peer_lists) {
        (Some(b), Some(c)) => println!(
            "ListContainers with {LISTED} containers: p99 berth {:.0} µs, containerd {:.0} µs = {:.2}× (p50 {:.0} µs vs {:.0} µs)",
            us(b.list.p99()),
            us(c.list.p99()),
            ratio(b.list.p99(), c.list.p99()),
            us(b.list.p50()),
            us(c.list.p50())
        ),
        (Some(b), None) => println!(
            "ListContainers with {LISTED} containers: p99 berth {:.0} µs (p50 {:.0} µs)",
            us(b.list.p99()),
            us(b.list.p50())
        ),
        _ => {}
    }
    if let Some(b) = &berth.lists {
        match (&b.stats, peer_lists.and_then(|c| c.stats.as_ref())) {
            (None, _) => println!("(ListContainerStats not implemented by berth yet)"),
            (Some(s), Some(cs)) => println!(
                "ListContainerStats with {LISTED} containers: p99 berth {:.0} µs ({} stats), containerd {:.0} µs ({} stats) = {:.2}×",
                us(s.p99()),
                b.stats_listed,
                us(cs.p99()),
                peer_lists.map(|c| c.stats_listed).unwrap_or(0),
                ratio(s.p99(), cs.p99())
            ),
            (Some(s), None) => println!(
                "ListContainerStats with {LISTED} containers: p99 berth {:.0} µs ({} stats)",
                us(s.p99()),
                b.stats_listed
            ),
        }
    }
    if let Some(c) = peer_lists {
        if c.stats.is_some() {
            println!(
                "(containerd's ListContainerStats answered {} stats for {LISTED} running containers)",
                c.stats_listed
            );
        }
    }

    let errors: Vec<&String> = berth
        .errors
        .iter()
        .chain(containerd.iter().flat_map(|c| c.errors.iter()))
        .collect();
    if !errors.is_empty() {
        println!("\nfailures:");
        for e in &errors {
            println!("  {e}");
        }
    }
    let failed = !errors.is_empty();
    // The registry and the work directory go before the exit status is set.
    drop(reg);
    drop(work);
    if failed {
        std::process::exit(1);
    }
}
