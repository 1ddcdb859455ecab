//! The daemon's life: claim the root, open the journal, start the node,
//! serve the CRI and admin sockets, and on SIGTERM/SIGINT stop accepting,
//! let in-flight calls finish (within the grace period), flush the journal
//! and exit. Containers are never touched on the way out: their shims keep
//! them.

use crate::admin::AdminService;
use crate::chaos::{Chaos, Schedule};
use crate::config::ChaosMode;
use crate::config::Config;
use crate::cri::Cri;
use crate::door::listen;
use anyhow::{anyhow, bail, Context, Result};
use berth_actors::container::checkpoint::criu::{CriuBinary, CriuProbe};
use berth_actors::host::HostFacts;
use berth_actors::image::manifest::Platform;
use berth_actors::image::messages::EnsureSandboxImage;
use berth_actors::image::registry::HostConfig;
use berth_actors::image::ImageConfig;
use berth_actors::journal::SledJournal;
use berth_actors::kernel::{By, ControlOp};
use berth_actors::network::NetworkConfig;
use berth_actors::node::{Node, NodeConfig};
use berth_actors::sandbox::SandboxConfig;
use berth_actors::shim::{Runtime, ShimConfig};
use berth_protocol::admin::admin_server::AdminServer;
use berth_protocol::cri::image_service_server::ImageServiceServer;
use berth_protocol::cri::runtime_service_server::RuntimeServiceServer;
use nix::fcntl::{Flock, FlockArg};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tonic::service::Routes;

pub async fn run(config: Config) -> Result<()> {
    let config = Arc::new(config);
    prepare_dir("root", &config.root)?;
    prepare_dir("state", &config.state)?;
    let _lock = lock_root(&config.root)?;
    for (key, path) in [
        ("cri.socket", &config.cri.socket),
        ("admin.socket", &config.admin.socket),
    ] {
        check_socket_path(key, path)?;
    }
    // Read before anything starts: a bad certificate is a start-up error.
    let tls = match (&config.stream.tls_cert_file, &config.stream.tls_key_file) {
        (Some(cert), Some(key)) => Some(
            berth_stream::tls::server_config(cert, key).map_err(|e| anyhow!("stream.tls: {e}"))?,
        ),
        _ => None,
    };

    let events_socket = config.state.join("events.sock");
    let pause_binary = beside_berthd(config.sandbox.pause_binary.as_ref(), "berth-pause")?;
    let host = Arc::new(probe_host(&config));
    let journal = SledJournal::open(&config.root.join("journal"))
        .map_err(|e| anyhow!("journal: {e}"))?
        .when_stuck(restart_self);
    let node = Node::start(
        Arc::new(journal),
        NodeConfig {
            network: NetworkConfig {
                cni_conf_dir: config.cni.conf_dir.clone(),
                cni_bin_dirs: config.cni.bin_dirs.clone(),
                netns_dir: config.state.join("netns"),
                plugin_timeout: Duration::from_secs(config.cni.plugin_timeout_secs),
                masquerade: config.cni.masquerade.clone(),
                masquerade_chain: berth_actors::network::masquerade::chain_name(&config.state),
            },
            image: image_config(&config),
            sandbox: SandboxConfig {
                state: config.state.clone(),
                pause_binary: pause_binary.clone(),
                cgroup_parent: config.sandbox.cgroup_parent.clone(),
                runtime_handlers: config.runtimes.keys().cloned().collect(),
                unusable_handlers: host.unusable.clone(),
                user_namespaces: host.user_namespaces.clone(),
            },
            shim: ShimConfig {
                state: config.state.clone(),
                shim_binary: beside_berthd(config.shim.binary.as_ref(), "berth-shim")?,
                events_socket: Some(events_socket.clone()),
                max_exec_sync: config.daemon.max_exec_sync,
                runtimes: runtimes(&config),
            },
            host: host.clone(),
            start_timeout: Duration::from_secs(config.daemon.start_timeout_secs),
            criu: Arc::new(CriuProbe::new(Box::new(CriuBinary::default()))),
        },
    )
    .await
    .map_err(|e| anyhow!("start-up: {e}"))?;
    let node = Arc::new(node);
    let events = crate::events::serve(&events_socket, node.clone())?;
    // The sandbox image is made (from the pause program, which may have
    // changed since the last start) and pinned while recovery runs, so that
    // no RunPodSandbox ever builds it.
    let sandbox_image = node.image.call(EnsureSandboxImage {
        pause_binary: pause_binary.clone(),
        rebuild: true,
    });
    let (recovery, sandbox_image) = tokio::join!(crate::recover::run(&node), sandbox_image);
    let recovery = recovery?;
    let sandbox_image = sandbox_image.map_err(|e| anyhow!("the sandbox image: {e}"))?;
    tracing::debug!(id = %sandbox_image.id, "sandbox image made and pinned");
    // While berthd runs, shims whose owners are gone are swept up.
    let sweeper = {
        let node = node.clone();
        tokio::spawn(async move {
            let mut suspects = std::collections::BTreeSet::new();
            let mut every = tokio::time::interval(crate::recover::SWEEP_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                crate::recover::sweep_unowned_shims(&node, &mut suspects).await;
            }
        })
    };
    let chaos = Arc::new(Chaos::new(node.clone()));
    if config.chaos.enabled {
        let op = match config.chaos.mode {
            ChaosMode::Kill => ControlOp::Kill(By::Chaos),
            ChaosMode::Panic => ControlOp::Panic(By::Chaos),
        };
        chaos
            .start(Schedule {
                interval: Duration::from_millis(config.chaos.interval_ms),
                actors: config.chaos.actors.clone(),
                op,
            })
            .map_err(|e| anyhow!("chaos: {e}"))?;
    }

    // Bound only now: no call reaches berth before every actor holds its state.
    let cri_listener = bind("cri.socket", &config.cri.socket, 0o660)?;
    let admin_listener = bind("admin.socket", &config.admin.socket, 0o600)?;
    tracing::info!(
        cri = %config.cri.socket.display(),
        admin = %config.admin.socket.display(),
        version = env!("CARGO_PKG_VERSION"),
        "berthd serving"
    );
    try_runtimes(&config, host.clone(), pause_binary);

    let stream_config = berth_stream::Config {
        tls,
        stream_creation_timeout: Duration::from_secs(config.stream.stream_creation_timeout_secs),
        idle_timeout: Duration::from_secs(config.stream.idle_timeout_secs),
        ..berth_stream::Config::new(std::net::SocketAddr::new(
            config.stream.address,
            config.stream.port,
        ))
    };
    let stream = berth_stream::StreamServer::start(
        stream_config,
        Arc::new(crate::stream::NodeRuntime::new(node.clone())),
    )
    .await
    .map_err(|e| {
        anyhow!(
            "stream: cannot listen on {}:{}: {e}",
            config.stream.address,
            config.stream.port
        )
    })?;

    let metrics = match config.metrics.address {
        Some(addr) => Some(
            crate::metrics::serve(
                addr,
                crate::metrics::Sources {
                    node: node.clone(),
                    stream: stream.clone(),
                },
            )
            .await
            .map_err(|e| anyhow!("metrics: cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let cri = Cri::new(node.clone(), config.clone(), host, stream);
    let cri_routes = Routes::new(RuntimeServiceServer::new(cri.clone()))
        .add_service(ImageServiceServer::new(cri));
    let admin_routes = Routes::new(AdminServer::new(AdminService::new(
        node.clone(),
        config.clone(),
        chaos.clone(),
        recovery,
    )));
    let servers = async {
        tokio::join!(
            listen::serve(cri_listener, cri_routes, stop_rx.clone()),
            listen::serve(admin_listener, admin_routes, stop_rx),
        )
    };

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::pin!(servers);
    tokio::select! {
        _ = &mut servers => bail!("the servers stopped unexpectedly"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    // Stop accepting connections and new calls, then let the calls in
    // flight finish.
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(config.daemon.shutdown_grace_secs);
    let left = crate::door::close(grace).await;
    if left > 0 {
        tracing::warn!(
            ?grace,
            left,
            "calls still in flight after the grace period; exiting anyway"
        );
    }
    events.shutdown();
    sweeper.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    // The sockets go; shims publishing an exit meanwhile find no endpoint,
    // and the next berthd reads their exit records.
    for path in [&config.cri.socket, &config.admin.socket, &events_socket] {
        let _ = std::fs::remove_file(path);
    }
    let shutdown_kernel = node.clone();
    tokio::task::spawn_blocking(move || shutdown_kernel.shutdown())
        .await
        .context("shutdown")?
        .map_err(|e| anyhow!("shutdown: {e}"))?;
    tracing::info!("berthd stopped; journal flushed");
    Ok(())
}

/// A helper binary: as configured, or beside berthd's own.
fn beside_berthd(
    configured: Option<&std::path::PathBuf>,
    name: &str,
) -> Result<std::path::PathBuf> {
    if let Some(p) = configured {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().context("berthd's own path")?;
    Ok(exe.with_file_name(name))
}

fn image_config(config: &Config) -> ImageConfig {
    ImageConfig {
        root: config.root.clone(),
        state: config.state.clone(),
        registries: config
            .registries
            .iter()
            .map(|(host, r)| {
                let h = HostConfig {
                    mirrors: r.mirrors.clone(),
                    insecure: r.insecure,
                    ca_file: r.ca_file.clone(),
                };
                (host.clone(), h)
            })
            .collect(),
        stall_timeout: Duration::from_secs(config.image.stall_timeout_secs),
        max_concurrent_downloads: config.image.max_concurrent_downloads,
        max_concurrent_pulls: config.image.max_concurrent_pulls,
        max_unpack_ratio: config.image.max_unpack_ratio,
        platform: Platform::host(),
    }
}

/// Creates the directory if needed and proves berthd can write in it.
fn prepare_dir(key: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow!("{key} {}: cannot create: {e}", dir.display()))?;
    if !dir.is_dir() {
        bail!("{key} {}: not a directory", dir.display());
    }
    let probe = dir.join(".berthd-write-probe");
    File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| anyhow!("{key} {}: not writable: {e}", dir.display()))
}

/// How long start-up waits for a lock whose berthd is gone.
const ORPHAN_LOCK_WAIT: Duration = Duration::from_secs(5);

/// One berthd per root: an exclusive lock held for the daemon's life.
///
/// The lock is close-on-exec, so no program berthd runs keeps it; but a
/// child caught between its fork and its exec when berthd is killed holds
/// a copy for that instant (on a busy node, milliseconds). So a lock whose
/// recorded berthd no longer runs is waited for, briefly, instead of
/// refusing to start; one held by a running berthd is refused at once.
fn lock_root(root: &Path) -> Result<Flock<File>> {
    let path = root.join("berthd.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| anyhow!("root {}: cannot open lock file: {e}", root.display()))?;
    let deadline = std::time::Instant::now() + ORPHAN_LOCK_WAIT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0)?;
                lock.rewind()?;
                write!(lock, "{}", std::process::id())?;
                return Ok(lock);
            }
            Err((mut back, _)) => {
                let mut pid = String::new();
                let _ = back.rewind();
                let _ = back.read_to_string(&mut pid);
                let pid = pid.trim().to_string();
                if running(&pid) {
                    bail!(
                        "root {}: another berthd (pid {pid}) is already running on it",
                        root.display()
                    );
                }
                if std::time::Instant::now() >= deadline {
                    bail!(
                        "root {}: its lock {} is still held {ORPHAN_LOCK_WAIT:?} after its berthd (pid {pid}) ended, by {}",
                        root.display(),
                        path.display(),
                        holders(&path)
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
                file = back;
            }
        }
    }
}

/// Whether `pid` names a process that runs (a zombie has ended).
fn running(pid: &str) -> bool {
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
    })
}

/// The processes holding `path` open, for the error that names them.
fn holders(path: &Path) -> String {
    let mut found = Vec::new();
    for proc_entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = proc_entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let fds = std::fs::read_dir(proc_entry.path().join("fd"));
        let holds = fds
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == path));
        if holds {
            let comm = std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
            found.push(format!("{} (pid {pid})", comm.trim()));
        }
    }
    if found.is_empty() {
        "a process that could not be found".to_string()
    } else {
        found.join(", ")
    }
}

/// The socket's directory must exist; a file in the way must be a socket
/// nobody serves on (a stale one, replaced).
fn check_socket_path(key: &str, path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        bail!(
            "{key} {}: directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if !m.file_type().is_socket() => {
            bail!("{key} {}: exists and is not a socket", path.display())
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{key} {}: another process is serving on it", path.display());
            }
            std::fs::remove_file(path)
                .map_err(|e| anyhow!("{key} {}: cannot replace stale socket: {e}", path.display()))
        }
    }
}

fn bind(key: &str, path: &Path, mode: u32) -> Result<UnixListener> {
    // Bound beside, given its mode, then renamed into place: nobody ever
    // finds the socket with another mode.
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{}.new", std::process::id()));
    let fresh = std::path::PathBuf::from(name);
    let _ = std::fs::remove_file(&fresh);
    let listener = UnixListener::bind(&fresh)
        .map_err(|e| anyhow!("{key} {}: cannot listen: {e}", path.display()))?;
    let placed = std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(mode))
        .map_err(|e| anyhow!("{key} {}: cannot set mode {mode:o}: {e}", path.display()))
        .and_then(|()| {
            std::fs::rename(&fresh, path)
                .map_err(|e| anyhow!("{key} {}: cannot put in place: {e}", path.display()))
        });
    if placed.is_err() {
        let _ = std::fs::remove_file(&fresh);
    }
    placed.map(|()| listener)
}

/// The OCI runtime of each configured runtime handler.
fn runtimes(config: &Config) -> BTreeMap<String, Runtime> {
    config
        .runtimes
        .iter()
        .map(|(name, r)| {
            let runtime = Runtime {
                binary: r.binary.clone(),
                root: r.root.clone().unwrap_or_else(|| config.state.join(name)),
                native_exec: r.native_exec,
                timeout: Duration::from_secs(r.timeout_secs),
                v2_shim: r.shim.clone(),
            };
            (name.clone(), runtime)
        })
        .collect()
}

/// The handlers by name with their OCI runtime binary ("" is runc's).
fn handlers(config: &Config) -> Vec<(String, std::path::PathBuf)> {
    let runtimes = runtimes(config);
    let default = runtimes
        .get("runc")
        .map(|r| (String::new(), r.binary.clone()));
    default
        .into_iter()
        .chain(runtimes.iter().map(|(n, r)| (n.clone(), r.binary.clone())))
        .collect()
}

/// What this node offers containers, for every runtime handler kubelet may
/// name: "" (the default, runc) and each configured one.
fn probe_host(config: &Config) -> HostFacts {
    let handlers = handlers(config);
    let facts = HostFacts::probe(
        handlers.iter().map(|(n, b)| (n.as_str(), b.as_path())),
        config.cgroup.disable_hugetlb_controller,
    );
    // Idmapped layers are tried where the image snapshots are (a few
    // milliseconds, so that Status says it from the first call).
    let userns = berth_actors::userns::probe(&config.root, &config.state);
    match &userns {
        Ok(()) => tracing::info!("pods may have user namespaces of their own"),
        Err(why) => tracing::info!(why = %why, "pods cannot have user namespaces of their own"),
    }
    let _ = facts.user_namespaces.set(userns);
    facts
}

/// Tries every handler's runtime in the background (each makes and
/// deletes a container of the pause program under `<state>/probe`), after
/// clearing what a try cut short by a kill left there.
fn try_runtimes(config: &Config, host: Arc<HostFacts>, pause: std::path::PathBuf) {
    let runtimes = runtimes(config);
    // A handler under a v2 shim is tried by its shim (which must answer
    // -v) and the OCI runtime the shim drives.
    let v2: BTreeMap<std::path::PathBuf, std::path::PathBuf> = runtimes
        .values()
        .filter_map(|r| Some((r.v2_shim.clone()?, r.binary.clone())))
        .collect();
    let handlers: Vec<(String, std::path::PathBuf)> = handlers(config)
        .into_iter()
        .map(|(name, binary)| {
            let shim = runtimes.get(&name).and_then(|r| r.v2_shim.clone());
            (name, shim.unwrap_or(binary))
        })
        .collect();
    // Each try is bounded by its runtime's own command timeout (the
    // shortest, for a binary several handlers name).
    let mut limits: BTreeMap<std::path::PathBuf, Duration> = BTreeMap::new();
    for r in runtimes.values() {
        let limit = limits.entry(r.binary.clone()).or_insert(r.timeout);
        *limit = (*limit).min(r.timeout);
    }
    // What a cut-short try left is the OCI runtimes' to delete (never a
    // v2 shim's: the shims make no probe containers).
    let oci: BTreeSet<std::path::PathBuf> = runtimes.values().map(|r| r.binary.clone()).collect();
    let work = config.state.join("probe");
    let cgroup_parent = config.sandbox.cgroup_parent.clone();
    let spawned = std::thread::Builder::new()
        .name("runtime-probe".into())
        .spawn(move || {
            let binaries: Vec<&Path> = oci.iter().map(|b| b.as_path()).collect();
            berth_actors::host::clear_probes(&work, &binaries, &cgroup_parent);
            let works = |binary: &Path| {
                let (binary, shim) = match v2.get(binary) {
                    Some(oci) => (oci.as_path(), Some(binary)),
                    None => (binary, None),
                };
                let limit = limits
                    .get(binary)
                    .copied()
                    .unwrap_or(Duration::from_secs(10));
                if let Some(shim) = shim {
                    berth_actors::host::try_v2_shim(shim, limit)?;
                }
                berth_actors::host::try_runtime(binary, &work, &pause, limit, &cgroup_parent)
            };
            host.try_handlers(
                handlers.iter().map(|(n, b)| (n.as_str(), b.as_path())),
                &works,
            );
            let _ = std::fs::remove_dir_all(&work);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the runtime probe");
    }
}

/// Replaces this berthd with a fresh one, the same program with the same
/// arguments: the journal's stuck database goes with the process, and the
/// new berthd rebuilds its state from the journal and the shims as after
/// a crash (containers run on meanwhile). Returns only if that fails.
fn restart_self() {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<std::ffi::CString> = std::env::args_os()
        .filter_map(|a| std::ffi::CString::new(a.as_bytes()).ok())
        .collect();
    let exe = c"/proc/self/exe";
    tracing::warn!(?args, "berthd restarts itself");
    let Err(e) = nix::unistd::execv(exe, &args);
    tracing::error!(error = %e, "berthd could not restart itself; the journal stays closed");
}
