//! Tasks under v2 shims, where they differ from berth-shim's: creating
//! one (shim start, stdio FIFOs, options), knowing its exit (a wait that
//! lasts as long as the task, the shim's TaskExit event, both putting the
//! exit on record once the output has drained), and taking back the
//! stdio after a restart of berthd.

use super::io::{self, Shape, TaskIo};
use super::{V2Shim, GROUP_ANNOTATION};
use crate::kernel::Reply;
use crate::shim::actor::{Runtime, ShimSupervisor, Shims};
use crate::shim::client::{CreateOpts, ShimClient, TaskApi};
use crate::shim::exits::{exited, ExitReported};
use crate::shim::launch;
use crate::shim::messages::CreateTask;
use crate::shim::store::ShimRecord;
use crate::shim::task::{remove_bundle, SHIM_TIMEOUT};
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};
use berth_protocol::shim::ExitRecord;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long an exit waits for the output to reach the log.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Puts an exit on record in `bundle` unless one is there.
/// A bundle that is gone (the task was deleted) is NotFound.
fn record_exit(bundle: &Path, status: u32, at_unix_nanos: i64) -> Result<ExitRecord> {
    if let Ok(Some(r)) = ExitRecord::read_from(bundle) {
        return Ok(r);
    }
    if !bundle.is_dir() {
        return Err(Error::NotFound(format!("{} is gone", bundle.display())));
    }
    let at = if at_unix_nanos > 0 {
        at_unix_nanos
    } else {
        crate::journal::unix_nanos()
    };
    let record = ExitRecord {
        status,
        exited_at_unix_nanos: at.max(0) as u128,
        note: None,
    };
    record.write_to(bundle).map_err(|e| {
        let what = format!("exit record in {}: {e}", bundle.display());
        // The bundle went meanwhile: the task was deleted.
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(what)
        } else {
            Error::Internal(what)
        }
    })?;
    Ok(record)
}

/// Puts an exit on record once the task's output has drained into its
/// log (at most [`DRAIN_LIMIT`]): the waiter's and the event's way alike.
async fn settle(
    io: Option<Arc<TaskIo>>,
    bundle: PathBuf,
    status: u32,
    at_unix_nanos: i64,
) -> Result<ExitRecord> {
    if let Some(io) = io {
        io.drained(DRAIN_LIMIT).await;
    }
    tokio::task::spawn_blocking(move || record_exit(&bundle, status, at_unix_nanos))
        .await
        .map_err(|e| Error::Internal(format!("exit task: {e}")))?
}

/// Waits for the task's exit as long as it runs, then puts it on record
/// once the output drained (the exit timer publishes it if the shim's
/// event did not come).
pub(in crate::shim) fn wait_for_exit(client: ShimClient, io: Option<Arc<TaskIo>>, bundle: PathBuf) {
    tokio::spawn(async move {
        let exit = match client.wait(None, None).await {
            Ok(exit) => exit,
            Err(e) => {
                // The shim is gone: the dead-shim watcher takes over.
                tracing::debug!(task = %client.id(), error = %e, "no exit from the shim");
                return;
            }
        };
        tracing::debug!(task = %client.id(), status = exit.status, "task ended");
        let at = berth_protocol::timefmt::unix_nanos(exit.exited_at);
        match settle(io, bundle, exit.status, i64::try_from(at).unwrap_or(0)).await {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => tracing::warn!(task = %client.id(), error = %e, "exit not recorded"),
        }
    });
}

impl Shims {
    /// How the v2 shim of `runtime` is run.
    pub(in crate::shim) fn v2_shim(&self, runtime: &Runtime) -> Option<V2Shim> {
        Some(V2Shim {
            binary: runtime.v2_shim.clone()?,
            runtime: runtime.clone(),
            events: self.config.events_socket.clone(),
            address: self.config.state.clone(),
        })
    }

    pub(in crate::shim) fn v2_io(&self, id: &str) -> Option<Arc<TaskIo>> {
        self.v2_io
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Forgets (and stops) the stdio of a deleted task.
    pub(in crate::shim) fn drop_v2_io(&self, id: &str) {
        let io = self
            .v2_io
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(io) = io {
            io.stop();
        }
    }

    pub(in crate::shim) fn create_v2(
        &mut self,
        msg: CreateTask,
        handler: String,
        runtime: Runtime,
    ) -> Reply<Self, u32> {
        let id = msg.id.clone();
        if msg.checkpoint.is_some() {
            return Reply::Now(Err(Error::FailedPrecondition(format!(
                "container {id}: runtime handler {handler:?} (a v2 shim) cannot restore a checkpoint"
            ))));
        }
        let Some(shim) = self.v2_shim(&runtime) else {
            return Reply::Now(Err(Error::Internal(format!(
                "runtime handler {handler:?} has no shim"
            ))));
        };
        let bundle = self.config.bundle(&id);
        let tty = msg
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let shape = Shape {
            stdin: msg.stdin,
            tty,
        };
        let log = msg.log_path.clone();
        let record = ShimRecord {
            container_id: id.clone(),
            pid: 0,
            address: String::new(),
            bundle: bundle.display().to_string(),
            runtime_handler: handler,
            api: TaskApi::V2,
            shim_id: if msg.pod == id {
                String::new()
            } else {
                msg.pod.clone()
            },
            log_path: log
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            stdin: shape.stdin,
            tty,
        };
        // Journalled before the shim exists, as for berth-shim.
        if let Err(e) = self.records.put(record) {
            return Reply::Now(Err(e.into()));
        }
        let mut spec = msg.spec;
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        annotations.insert(GROUP_ANNOTATION.to_string(), msg.pod.clone());
        spec.set_annotations(Some(annotations));
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let work = async move {
            let b = bundle.clone();
            tokio::task::spawn_blocking(move || -> Result<()> {
                std::fs::create_dir_all(&b)
                    .map_err(|e| Error::Internal(format!("create bundle {}: {e}", b.display())))?;
                spec.save(b.join(launch::SPEC_FILE))
                    .map_err(|e| Error::Internal(format!("write {}/config.json: {e}", b.display())))
            })
            .await
            .map_err(|e| Error::Internal(format!("bundle task: {e}")))??;
            let mut client: Option<ShimClient> = None;
            let mut shim_log = None;
            let started = async {
                let opened = io::open(&bundle, shape, true)?;
                let t = std::time::Instant::now();
                let (socket, log_task) = shim.start(&id, &bundle, SHIM_TIMEOUT).await?;
                shim_log = Some(log_task);
                let c = ShimClient::connect_api(&id, &socket, TaskApi::V2).await?;
                client = Some(c.clone());
                let paths = opened.paths().clone();
                let create = CreateOpts {
                    bundle: bundle.clone(),
                    stdout: Some(paths.stdout),
                    stderr: paths.stderr,
                    stdin_fifo: paths.stdin,
                    terminal: tty,
                    options: Some(shim.options()),
                    ..Default::default()
                };
                let pid = c.create(&create).await?;
                let info = c.connect_info().await?;
                let io = opened.start(log.as_deref())?;
                tracing::debug!(
                    task = %id,
                    shim_pid = info.shim_pid,
                    total_ms = t.elapsed().as_millis() as u64,
                    "task created under a v2 shim"
                );
                Ok::<_, Error>((info.shim_pid, pid, c, socket, io))
            }
            .await;
            match started {
                Ok((shim_pid, pid, c, socket, io)) => {
                    if let Some(l) = shim_log {
                        io.hold(l);
                    }
                    Ok((shim_pid, pid, c, socket, Arc::new(io)))
                }
                Err(e) => {
                    // Nothing of a failed start stays: task, runtime
                    // state, cgroup, bundle. The shim ends by itself once
                    // it holds no task (another of the pod's may hold it).
                    if let Some(l) = shim_log {
                        l.abort();
                    }
                    if let Some(c) = client {
                        let _ = c.kill(None, libc::SIGKILL as u32, true).await;
                        let _ = c.delete(None).await;
                        let _ = c.shutdown(false).await;
                    }
                    let _ = shim.cleanup(&id, &bundle, SHIM_TIMEOUT).await;
                    let b = bundle.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        crate::shim::health::remove_cgroup(&cgroups_path);
                        remove_bundle(&b, Path::new(""))
                    })
                    .await;
                    Err(e)
                }
            }
        };
        let id = msg.id;
        Reply::later(
            work,
            move |me: &mut Self, started: Result<(u32, u32, ShimClient, PathBuf, Arc<TaskIo>)>| {
                match started {
                    Err(e) => {
                        let _ = me.records.remove(&id);
                        Err(e)
                    }
                    Ok((shim_pid, task_pid, client, socket, io)) => {
                        if let Some(mut r) = me.records.get(&id).cloned() {
                            r.pid = shim_pid;
                            r.address = socket.display().to_string();
                            me.records.put(r)?;
                        }
                        me.v2_io
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id.clone(), io);
                        me.clients.insert(id, client);
                        Ok(task_pid)
                    }
                }
            },
        )
    }

    /// A v2 task's exit, reported by its shim's event: told once the
    /// output is in the log, and put on record.
    pub(in crate::shim) fn v2_exit(
        &mut self,
        msg: ExitReported,
        bundle: String,
    ) -> Reply<Self, ()> {
        let io = self.v2_io(&msg.id);
        let id = msg.id.clone();
        let work = settle(
            io,
            PathBuf::from(bundle),
            msg.status,
            msg.exited_at_unix_nanos,
        );
        Reply::Later(Box::pin(wrap_future(work).map(
            move |res: Result<ExitRecord>, act: &mut ShimSupervisor, ctx| {
                let record = match res {
                    Ok(r) => r,
                    // Deleted meanwhile: nobody is left to tell.
                    Err(Error::NotFound(_)) => return Ok(()),
                    Err(e) => return Err(e),
                };
                if let Some(me) = act.state_mut() {
                    me.publish(exited(&id, record), ctx);
                }
                Ok(())
            },
        )))
    }

    /// Takes back the stdio of live v2 tasks after berthd or this actor
    /// restarted, and waits for their exits again.
    pub(in crate::shim) fn revive_v2(&self, live: &[(String, ShimClient)]) {
        for (id, client) in live {
            let Some(record) = self.records.get(id) else {
                continue;
            };
            if record.api != TaskApi::V2 {
                continue;
            }
            let bundle = PathBuf::from(&record.bundle);
            let io = match self.v2_io(id) {
                Some(io) => Some(io),
                None => {
                    let shape = Shape {
                        stdin: record.stdin,
                        tty: record.tty,
                    };
                    let log =
                        (!record.log_path.is_empty()).then(|| PathBuf::from(&record.log_path));
                    let revived = io::open(&bundle, shape, false)
                        .and_then(|o| o.start(log.as_deref()))
                        .map(Arc::new);
                    match revived {
                        Ok(io) => {
                            if let Ok(l) = super::follow_log(id, &bundle) {
                                io.hold(l);
                            }
                            self.v2_io
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(id.clone(), io.clone());
                            Some(io)
                        }
                        Err(e) => {
                            tracing::warn!(task = %id, error = %e, "cannot take back the task's stdio");
                            None
                        }
                    }
                }
            };
            wait_for_exit(client.clone(), io, bundle);
        }
    }

    /// A v2 task's log is berthd's to reopen.
    pub(in crate::shim) fn reopen_v2_log(&self, id: &str) -> Result<()> {
        match self.v2_io(id) {
            Some(io) => io.reopen_log(),
            None => Err(Error::FailedPrecondition(format!(
                "container {id}: its stdio are not held"
            ))),
        }
    }
}
