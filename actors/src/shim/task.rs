//! Tasks under shims: start (bundle, shim, create, start), stop (signal,
//! then SIGKILL after the timeout), delete (task, shim, bundle) and state.
//! When a shim cannot be reached, what it left on disk (its exit record)
//! still answers.

use super::actor::{ShimSupervisor, Shims};
use super::client::{CreateOpts, ExitInfo, ShimClient, TaskApi, TaskStatus};
use super::host::{Os, Processes};
use super::launch::{self, LaunchOpts, ShimArgs};
use super::messages::*;
use super::store::ShimRecord;
use crate::kernel::Reply;
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// How long a shim may take to start and answer a call.
pub(super) const SHIM_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a restored task's CRIU images are, in its bundle.
const CHECKPOINT_DIR: &str = "checkpoint";

/// How long a removal waits for a shim it ended to be gone.
const SHIM_END_LIMIT: Duration = Duration::from_secs(5);

fn exit(e: ExitInfo) -> Exit {
    Exit {
        status: e.status,
        exited_unix_nanos: e
            .exited_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
    }
}

/// Removes a bundle; what is gone is fine.
pub(super) fn remove_bundle(bundle: &Path, socket: &Path) {
    let _ = std::fs::remove_file(socket);
    let _ = std::fs::remove_file(berth_protocol::shim::attach_socket(socket));
    if let Err(e) = std::fs::remove_dir_all(bundle) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(bundle = %bundle.display(), error = %e, "cannot remove bundle");
        }
    }
}

impl Shims {
    /// A connection to the container's shim, if berth knows one.
    pub(super) fn client(&self, id: &str) -> Option<(Option<ShimClient>, ShimRecord)> {
        let record = self.records.get(id)?.clone();
        Some((self.clients.get(id).cloned(), record))
    }

    pub(super) fn create_task(&mut self, msg: CreateTask) -> Reply<Self, u32> {
        let id = msg.id.clone();
        if self.records.get(&id).is_some() {
            return Reply::Now(Err(Error::AlreadyExists(format!(
                "task {id} already has a shim"
            ))));
        }
        let handler = if msg.runtime_handler.is_empty() {
            "runc"
        } else {
            msg.runtime_handler.as_str()
        };
        let Some(runtime) = self.config.runtimes.get(handler).cloned() else {
            return Reply::Now(Err(Error::InvalidArgument(format!(
                "runtime handler {handler:?} is not configured"
            ))));
        };
        if runtime.v2_shim.is_some() {
            let handler = handler.to_string();
            return self.create_v2(msg, handler, runtime);
        }
        let bundle = self.config.bundle(&id);
        let socket = self.config.socket(&id);
        let record = ShimRecord {
            container_id: id.clone(),
            pid: 0,
            address: socket.display().to_string(),
            bundle: bundle.display().to_string(),
            runtime_handler: handler.to_string(),
            ..Default::default()
        };
        // Journalled before the shim exists: recovery finds and ends a
        // shim whose start nobody finished.
        if let Err(e) = self.records.put(record) {
            return Reply::Now(Err(e.into()));
        }
        let runtime_for_undo = runtime.clone();
        let opts = LaunchOpts {
            shim_binary: self.config.shim_binary.clone(),
            args: ShimArgs {
                id: id.clone(),
                bundle: bundle.clone(),
                socket: socket.clone(),
                runtime: runtime.binary,
                runtime_root: runtime.root,
                events: self.config.events_socket.clone(),
                runtime_exec: !runtime.native_exec,
                runtime_timeout: Some(runtime.timeout),
            },
            timeout: SHIM_TIMEOUT,
        };
        let cgroups_path = msg
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let spec = msg.spec;
        let log = msg.log_path;
        let stdin = msg.stdin;
        let checkpoint = msg.checkpoint;
        let restore_from = checkpoint.as_ref().map(|_| bundle.join(CHECKPOINT_DIR));
        let work = async move {
            let b = bundle.clone();
            let s = socket.clone();
            tokio::task::spawn_blocking(move || -> Result<()> {
                std::fs::create_dir_all(&b)
                    .map_err(|e| Error::Internal(format!("create bundle {}: {e}", b.display())))?;
                if let Some(dir) = s.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Error::Internal(format!("create {}: {e}", dir.display())))?;
                }
                spec.save(b.join(launch::SPEC_FILE)).map_err(|e| {
                    Error::Internal(format!("write {}/config.json: {e}", b.display()))
                })?;
                // The checkpoint's images go with the bundle.
                if let Some(images) = &checkpoint {
                    let to = b.join(CHECKPOINT_DIR);
                    std::fs::rename(images, &to).map_err(|e| {
                        Error::Internal(format!(
                            "move {} to {}: {e}",
                            images.display(),
                            to.display()
                        ))
                    })?;
                }
                Ok(())
            })
            .await
            .map_err(|e| Error::Internal(format!("bundle task: {e}")))??;
            let started = async {
                let t = std::time::Instant::now();
                let launched = launch::launch(&opts).await?;
                let launch_ms = t.elapsed().as_millis();
                let client = ShimClient::connect(&opts.args.id, &launched.socket).await?;
                let create = CreateOpts {
                    bundle: bundle.clone(),
                    stdout: log.clone(),
                    stderr: None,
                    stdin,
                    checkpoint: restore_from,
                    ..Default::default()
                };
                let pid = client.create(&create).await?;
                tracing::debug!(
                    task = %opts.args.id,
                    launch_ms,
                    total_ms = t.elapsed().as_millis() as u64,
                    "task created"
                );
                Ok::<_, Error>((launched.pid, pid, client))
            }
            .await;
            if started.is_err() {
                // Nothing of a failed start stays: task, shim, bundle.
                if let Ok(client) = ShimClient::connect(&opts.args.id, &socket).await {
                    let _ = client.kill(None, libc::SIGKILL as u32, true).await;
                    let _ = client.delete(None).await;
                    let _ = client.shutdown(true).await;
                }
                Os.kill_shim_of(&bundle, &opts.args.id);
                let (b, s, id, rt) = (
                    bundle.clone(),
                    socket.clone(),
                    opts.args.id.clone(),
                    runtime_for_undo,
                );
                let _ = tokio::task::spawn_blocking(move || {
                    // A runtime killed half-way through create leaves
                    // its state (and a waiting init) behind.
                    super::health::force_delete(&rt, &id);
                    super::health::remove_cgroup(&cgroups_path);
                    remove_bundle(&b, &s)
                })
                .await;
            }
            started
        };
        Reply::later(
            work,
            move |me: &mut Self, started: Result<(u32, u32, ShimClient)>| match started {
                Err(e) => {
                    let _ = me.records.remove(&id);
                    Err(e)
                }
                Ok((shim_pid, task_pid, client)) => {
                    if let Some(mut r) = me.records.get(&id).cloned() {
                        r.pid = shim_pid;
                        me.records.put(r)?;
                    }
                    me.clients.insert(id, client);
                    Ok(task_pid)
                }
            },
        )
    }

    pub(super) fn start_task(&mut self, id: String) -> Reply<Self, u32> {
        let Some((client, record)) = self.client(&id) else {
            return Reply::Now(Err(Error::NotFound(format!("task {id} not found"))));
        };
        let waiter =
            (record.api == TaskApi::V2).then(|| (self.v2_io(&id), PathBuf::from(&record.bundle)));
        let work = async move {
            let client = record.client(client).await?;
            let started = client.start(None).await;
            if let (Ok(_), Some((io, bundle))) = (&started, waiter) {
                super::v2::task::wait_for_exit(client.clone(), io, bundle);
            }
            // A run that failed leaves the task created (a start refused
            // because it already ran does not): the shim removed what the
            // runtime left, but a runtime killed half-way may leave the
            // cgroup too, with a waiting init in it.
            let unrun = started.is_err()
                && client
                    .state(None)
                    .await
                    .is_ok_and(|s| s.status == TaskStatus::Created && s.pid == 0);
            if unrun {
                let config = Path::new(&record.bundle).join(launch::SPEC_FILE);
                let _ = tokio::task::spawn_blocking(move || {
                    let path = oci_spec::runtime::Spec::load(&config)
                        .ok()
                        .and_then(|s| s.linux().as_ref()?.cgroups_path().clone());
                    if let Some(path) = path {
                        super::health::remove_cgroup(&path.display().to_string());
                    }
                })
                .await;
            }
            started
        };
        Reply::off(work)
    }

    pub(super) fn checkpoint_task(&mut self, msg: CheckpointTask) -> Reply<Self, ()> {
        self.with_client(&msg.id, move |client| async move {
            client.checkpoint(&msg.images).await
        })
    }

    /// Runs `call` with the task's shim (connected again if berthd lost
    /// the connection); an unknown task is NOT_FOUND.
    fn with_client<T, F, Fut>(&self, id: &str, call: F) -> Reply<Self, T>
    where
        T: 'static,
        F: FnOnce(ShimClient) -> Fut + 'static,
        Fut: std::future::Future<Output = Result<T>> + 'static,
    {
        let Some((client, record)) = self.client(id) else {
            return Reply::Now(Err(Error::NotFound(format!("task {id} not found"))));
        };
        Reply::off(async move {
            let client = record.client(client).await?;
            call(client).await
        })
    }

    pub(super) fn stop_task(&mut self, msg: StopTask) -> Reply<Self, Option<Exit>> {
        let Some((client, record)) = self.client(&msg.id) else {
            return Reply::Now(Ok(None));
        };
        let work = async move {
            let bundle = PathBuf::from(&record.bundle);
            let Ok(client) = record.client(client).await else {
                // The shim is gone: its exit record answers.
                return Ok((None, launch::read_exit(&bundle)?.map(exit)));
            };
            let state = match client.state(None).await {
                Ok(s) => s,
                // The shim holds no task any more (a delete that was cut
                // short): it has ended, as its exit record says.
                Err(Error::NotFound(_)) => {
                    return Ok((Some(client), launch::read_exit(&bundle)?.map(exit)))
                }
                Err(e) => return Err(e),
            };
            if state.status == TaskStatus::Stopped {
                return Ok((Some(client), state.exit.map(exit)));
            }
            let signal = u32::try_from(msg.signal).unwrap_or(libc::SIGTERM as u32);
            let _ = client.kill(None, signal, false).await;
            let ended = match client.wait(None, Some(msg.timeout)).await {
                Ok(e) => e,
                Err(_) => {
                    let _ = client.kill(None, libc::SIGKILL as u32, true).await;
                    client.wait(None, Some(SHIM_TIMEOUT)).await?
                }
            };
            Ok((Some(client), Some(exit(ended))))
        };
        let id = msg.id;
        Reply::Later(Box::pin(wrap_future(work).map(
            move |res: Result<(Option<ShimClient>, Option<Exit>)>, act: &mut ShimSupervisor, _| {
                let (client, ended) = res?;
                if let (Some(c), Some(me)) = (client, act.state_mut()) {
                    me.clients.insert(id, c);
                }
                Ok(ended)
            },
        )))
    }

    pub(super) fn reap_task(&mut self, id: String) -> Reply<Self, ()> {
        if self.deleting.contains(&id) {
            return Reply::Now(Ok(()));
        }
        let Some((client, record)) = self.client(&id) else {
            return Reply::Now(Ok(()));
        };
        if record.pid == 0 && client.is_none() {
            return Reply::Now(Ok(()));
        }
        Reply::off(async move {
            let Ok(client) = record.client(client).await else {
                return Ok(());
            };
            if !matches!(client.state(None).await, Ok(s) if s.status == TaskStatus::Stopped) {
                return Ok(());
            }
            match client.delete(None).await {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => {
                    tracing::debug!(task = %id, error = %e, "the exited task was not deleted")
                }
            }
            Ok(())
        })
    }

    pub(super) fn delete_task(&mut self, id: String) -> Reply<Self, ()> {
        let Some((client, record)) = self.client(&id) else {
            return Reply::Now(Ok(()));
        };
        if record.pid == 0 && client.is_none() {
            // Its shim is still starting: deleting now would race the
            // start.
            return Reply::Now(Err(Error::Unavailable(format!(
                "the shim of task {id} is starting; retry"
            ))));
        }
        self.deleting.insert(id.clone());
        let runtime = self.runtime_of(&record);
        let v2 = runtime
            .as_ref()
            .filter(|_| record.api == TaskApi::V2)
            .and_then(|rt| self.v2_shim(rt));
        let task = id.clone();
        let work = async move {
            let bundle = PathBuf::from(&record.bundle);
            let socket = PathBuf::from(&record.address);
            let client = record.client(client).await.ok();
            // A cached connection to a shim that has since died.
            let client = match client {
                Some(c)
                    if c.state(None)
                        .await
                        .is_err_and(|e| matches!(e, Error::Unavailable(_))) =>
                {
                    None
                }
                other => other,
            };
            if let (None, Some(shim)) = (&client, &v2) {
                // No shim to ask: its `delete` ends what the runtime holds.
                if let Err(e) = shim.cleanup(&task, &bundle, SHIM_TIMEOUT).await {
                    tracing::warn!(task = %task, error = %e, "the shim's delete failed");
                }
            } else if client.is_none() {
                // No shim to ask: the runtime ends what it still holds.
                if let Some(rt) = runtime {
                    let t = task.clone();
                    tokio::task::spawn_blocking(move || super::health::force_delete(&rt, &t))
                        .await
                        .map_err(|e| Error::Internal(format!("runtime task: {e}")))?;
                }
            }
            if let Some(c) = client {
                // A task still running is killed first: delete wants it
                // stopped.
                if let Ok(s) = c.state(None).await {
                    if s.status != TaskStatus::Stopped {
                        let _ = c.kill(None, libc::SIGKILL as u32, true).await;
                        let _ = c.wait(None, Some(SHIM_TIMEOUT)).await;
                    }
                }
                match c.delete(None).await {
                    Ok(_) | Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                // A v2 shim may serve the pod's other tasks: it ends by
                // itself once it holds none.
                let _ = c.shutdown(v2.is_none()).await;
            }
            // berth-shim would end by itself a moment after its shutdown
            // answered; it holds nothing more, so it is ended now and
            // awaited: a removal that returned leaves no shim behind.
            if v2.is_none() {
                if let Ok(pid) = launch::read_shim_pid(&bundle) {
                    super::health::end_shim(pid, &task, SHIM_END_LIMIT).await;
                }
            }
            // A v2 shim's socket is the pod's, and the shim's to remove.
            let socket = if v2.is_some() { PathBuf::new() } else { socket };
            tokio::task::spawn_blocking(move || remove_bundle(&bundle, &socket))
                .await
                .map_err(|e| Error::Internal(format!("bundle task: {e}")))?;
            Ok(())
        };
        Reply::later(work, move |me: &mut Self, res: Result<()>| {
            me.deleting.remove(&id);
            res?;
            me.drop_v2_io(&id);
            me.clients.remove(&id);
            me.buried.remove(&id);
            me.published.remove(&id);
            me.records.remove(&id)?;
            Ok(())
        })
    }

    pub(super) fn task_spec(&mut self, id: String) -> Reply<Self, Option<serde_json::Value>> {
        let Some(record) = self.records.get(&id) else {
            return Reply::Now(Ok(None));
        };
        let spec = Path::new(&record.bundle).join(launch::SPEC_FILE);
        Reply::off(async move {
            tokio::task::spawn_blocking(move || {
                std::fs::read(&spec)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
            })
            .await
            .map_err(|e| Error::Internal(format!("spec task: {e}")))
        })
    }

    pub(super) fn task_state(&mut self, id: String) -> Reply<Self, TaskInfo> {
        let Some((client, record)) = self.client(&id) else {
            return Reply::Now(Err(Error::NotFound(format!("task {id} not found"))));
        };
        let work = async move {
            let bundle = PathBuf::from(&record.bundle);
            let client = record.client(client).await.ok();
            let Some(c) = client else {
                let ended = launch::read_exit(&bundle)?.map(exit);
                return Ok(TaskInfo {
                    pid: 0,
                    running: false,
                    exit: ended,
                });
            };
            let s = match c.state(None).await {
                Ok(s) => s,
                Err(Error::NotFound(_)) => {
                    return Ok(TaskInfo {
                        pid: 0,
                        running: false,
                        exit: launch::read_exit(&bundle)?.map(exit),
                    })
                }
                Err(e) => return Err(e),
            };
            Ok(TaskInfo {
                pid: s.pid,
                running: matches!(s.status, TaskStatus::Running | TaskStatus::Created),
                exit: s.exit.map(exit),
            })
        };
        Reply::off(work)
    }
}

impl Shims {
    pub(super) fn update_task(&mut self, msg: UpdateTask) -> Reply<Self, ()> {
        self.with_client(&msg.id, move |client| async move {
            client.update(&msg.resources_json).await
        })
    }

    /// The shim reopens the log file on SIGUSR1; lines are written whole,
    /// so none is lost or split across the two files.
    pub(super) fn reopen_log(&self, id: &str) -> Result<()> {
        let record = self
            .records
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("task {id} not found")))?;
        if record.api == TaskApi::V2 {
            return self.reopen_v2_log(id);
        }
        let pid = launch::read_shim_pid(Path::new(&record.bundle))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .map_err(|e| Error::Unavailable(format!("the shim of {id} is gone: {e}")))
    }
}
