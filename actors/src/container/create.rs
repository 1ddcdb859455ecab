//! CreateContainer: check the request, reserve the name, journal the
//! intent; then, off the actor: the pod (must be ready), the image (must be
//! present), the log file's directory, host paths of mounts, the root
//! filesystem (an overlay over the image), the effective user, the OCI spec
//! and the task under its own shim (created, not started). Every step
//! registers its undo; a failure rolls back everything.

use super::actor::{ContainerDeps, Containers};
use super::checkpoint;
use super::messages::{ContainerConfig, CreateContainer, ImageRun, SpecInputs};
use super::spec;
use super::store::{ContainerRecord, ContainerState};
use crate::events::Lifecycle;
use crate::image::messages::{ImageStatus, PrepareRootfs, RemoveRootfs};
use crate::kernel::{patiently, Reply};
use crate::sandbox::files::PodFiles;
use crate::sandbox::messages::{NamespaceMode, PodSandboxStatus};
use crate::sandbox::store::SandboxState;
use crate::shim::messages::{CreateTask, DeleteTask};
use crate::{Error, Result};
use std::path::PathBuf;

/// The signal number of a STOPSIGNAL ("SIGTERM", "TERM", "15").
fn signal_number(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let name = s.trim().to_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// How the image says to run it, from its config.
fn image_run(config: Option<&serde_json::Value>) -> ImageRun {
    let c = config
        .and_then(|c| c.get("config"))
        .cloned()
        .unwrap_or_default();
    let strings = |key: &str| -> Vec<String> {
        c.get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let text = |key: &str| {
        c.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    ImageRun {
        entrypoint: strings("Entrypoint"),
        cmd: strings("Cmd"),
        env: strings("Env"),
        working_dir: text("WorkingDir"),
        user: text("User"),
        stop_signal: text("StopSignal"),
    }
}

struct Made {
    cgroups_path: String,
    image_id: String,
    log_path: PathBuf,
    user: (u32, u32, Vec<u32>),
    pid: u32,
    stop_signal: i32,
}

struct Undo {
    deps: ContainerDeps,
    id: String,
    rootfs: bool,
    task: bool,
}

impl Undo {
    async fn run(self) {
        if self.task {
            let (shim, id) = (&self.deps.shim, &self.id);
            if let Err(e) = patiently(|| shim.call(DeleteTask { id: id.clone() })).await {
                tracing::warn!(container = %self.id, error = %e, "rollback: task not deleted");
            }
        }
        if self.rootfs {
            let (image, id) = (&self.deps.image, &self.id);
            let remove = || {
                image.call(RemoveRootfs {
                    container_id: id.clone(),
                })
            };
            if let Err(e) = patiently(remove).await {
                tracing::warn!(container = %self.id, error = %e, "rollback: rootfs not removed");
            }
        }
    }
}

async fn make(
    deps: ContainerDeps,
    undo: &mut Undo,
    id: &str,
    pod_id: &str,
    config: ContainerConfig,
    target_pid: Option<u32>,
) -> Result<Made> {
    // A checkpoint archive in place of an image: the container is restored
    // from it, on the image it was checkpointed from.
    let mut config = config;
    let restore = match checkpoint::restore_source(&config.image) {
        None => None,
        Some(archive) => {
            checkpoint::criu_usable(deps.criu.clone(), "restoring a checkpoint").await?;
            let scratch = checkpoint::Scratch::new(&deps.state, &format!("restore-{id}"))?;
            let dir = scratch.0.clone();
            let from = archive.clone();
            let unpacked = tokio::task::spawn_blocking(move || {
                checkpoint::archive::unpack(&from, &dir, "image")
            })
            .await
            .map_err(|e| Error::Internal(format!("restore task: {e}")))??;
            tracing::info!(container = %id, archive = %archive.display(), image = %unpacked.config.image(), "restoring a checkpoint");
            config.image = unpacked.config.image().to_string();
            Some((scratch, unpacked, archive))
        }
    };
    // The pod and the image are asked at once.
    let (pod, image) = futures::join!(
        deps.sandbox.call(PodSandboxStatus { id: pod_id.into() }),
        deps.image.call(ImageStatus {
            image: config.image.clone(),
            verbose: true,
        })
    );
    let pod = pod?;
    if pod.state != SandboxState::Ready {
        return Err(Error::FailedPrecondition(format!(
            "pod sandbox {pod_id} is not ready"
        )));
    }
    let image = image?.ok_or_else(|| match &restore {
        Some((_, _, archive)) => Error::NotFound(format!(
            "image {:?} of checkpoint {} is not present: pull it first",
            config.image,
            archive.display()
        )),
        None => Error::NotFound(format!(
            "image {:?} is not present: pull it first",
            config.image
        )),
    })?;
    let run = image_run(image.config.as_ref());

    let log_dir = if pod.config.log_directory.is_empty() {
        deps.default_log_dir.join(pod_id)
    } else {
        PathBuf::from(&pod.config.log_directory)
    };
    let log_path = if config.log_path.is_empty() {
        None
    } else {
        Some(log_dir.join(&config.log_path))
    };
    let (c, lp) = (config.clone(), log_path.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        if let Some(dir) = lp.as_ref().and_then(|p| p.parent()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Internal(format!("create log directory {}: {e}", dir.display()))
            })?;
        }
        spec::prepare_host_paths(&c)
    })
    .await
    .map_err(|e| Error::Internal(format!("prepare task: {e}")))??;

    undo.rootfs = true;
    let rootfs = deps
        .image
        .call(PrepareRootfs {
            container_id: id.into(),
            image: image.record.id.clone(),
            // Writable even for a read-only container: runc creates the
            // mount points it needs, then makes the root read-only itself
            // (the spec's root.readonly).
            read_only: false,
            volume_of: None,
            diff: restore.as_ref().map(|(_, u, _)| u.diff.clone()),
            userns: pod.config.security.user_namespace.map(|m| {
                (
                    crate::network::netns::userns_pin(std::path::Path::new(&pod.netns_path)),
                    m,
                )
            }),
        })
        .await?;
    mount_image_volumes(&deps, id, &mut config).await?;
    let user = spec::resolve_user(&rootfs, &run.user, &config.security)?;
    let files = PodFiles::new(&deps.state, pod_id);
    let parent = pod
        .cgroups_path
        .rsplit_once('/')
        .map(|(p, _)| p.to_string())
        .unwrap_or_default();
    let stop_signal = match config.stop_signal {
        0 => signal_number(&run.stop_signal).unwrap_or(libc::SIGTERM),
        s => s,
    };
    let inputs = SpecInputs {
        id: id.into(),
        config: config.clone(),
        image: run,
        rootfs,
        pod_pid: pod.pid,
        target_pid,
        pod_security: pod.config.security.clone(),
        hostname_file: files.hostname(),
        hosts_file: files.hosts(),
        resolv_conf: files.resolv_conf(),
        shm: (pod.config.security.namespaces.ipc != NamespaceMode::Node).then(|| files.shm()),
        cgroups_path: format!("{parent}/{id}"),
        sysctls: pod.config.sysctls.clone(),
        host: deps.host.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    };
    let cgroups_path = inputs.cgroups_path.clone();
    let oci = spec::build(&inputs)?;
    undo.task = true;
    let pid = deps
        .shim
        .call(CreateTask {
            id: id.into(),
            pod: pod_id.into(),
            spec: oci,
            log_path: log_path.clone(),
            runtime_handler: pod.runtime_handler.clone(),
            stdin: config.stdin,
            checkpoint: restore.as_ref().map(|(_, u, _)| u.images.clone()),
        })
        .await?;
    // The images went into the task's bundle; the rest goes now.
    drop(restore);
    Ok(Made {
        cgroups_path,
        image_id: image.record.id,
        log_path: log_path.unwrap_or_default(),
        user,
        pid,
        stop_signal,
    })
}

/// Mounts each image volume the config asks for (read-only, kept by the
/// ImageActor beside the container's root filesystem and removed with it)
/// and points its mount there: at the image's files or at its sub-path.
async fn mount_image_volumes(
    deps: &ContainerDeps,
    id: &str,
    config: &mut ContainerConfig,
) -> Result<()> {
    for (i, m) in config.mounts.iter_mut().enumerate() {
        if m.image.is_empty() {
            continue;
        }
        let image = deps
            .image
            .call(ImageStatus {
                image: m.image.clone(),
                verbose: false,
            })
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "mounts[{i}].image: image {:?} is not present: pull it first",
                    m.image
                ))
            })?;
        let root = deps
            .image
            .call(PrepareRootfs {
                container_id: format!("{id}-image-{i}"),
                image: image.record.id.clone(),
                read_only: true,
                volume_of: Some(id.into()),
                diff: None,
                userns: None,
            })
            .await?;
        let sub = m.image_sub_path.clone();
        let source = tokio::task::spawn_blocking(move || spec::image_volume_source(&root, &sub))
            .await
            .map_err(|e| Error::Internal(format!("image volume task: {e}")))??;
        let source = source.ok_or_else(|| {
            Error::NotFound(format!(
                "mounts[{i}].image_sub_path {:?} does not exist in image {:?}",
                m.image_sub_path, m.image
            ))
        })?;
        tracing::debug!(container = %id, image = %image.record.id, source = %source.display(), "image volume mounted");
        m.host_path = source.display().to_string();
        m.readonly = true;
    }
    Ok(())
}

impl Containers {
    pub(super) fn create(&mut self, msg: CreateContainer) -> Reply<Self, String> {
        if let Err(e) = super::validate::container(&msg.config) {
            return Reply::Now(Err(e));
        }
        let pod_id = msg.pod_sandbox_id.clone();
        // Unique per pod, as kubelet's retries collide on it.
        let name = format!("{}_{}_{}", msg.config.name, pod_id, msg.config.attempt);
        let holder = self.reserved.get(&name).cloned().or_else(|| {
            self.records
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.id.clone())
        });
        if let Some(holder) = holder {
            // A holder still Creating that no call is making was cut short
            // (a restart) and is being undone: the name is free soon.
            let undoing = !self.reserved.contains_key(&name)
                && self
                    .records
                    .get(&holder)
                    .is_some_and(|r| r.state == super::store::ContainerState::Creating);
            if undoing {
                return Reply::Now(Err(Error::Unavailable(format!(
                    "container name {name:?} is held by {holder}, whose creation was cut short and is being undone; retry"
                ))));
            }
            return Reply::Now(Err(Error::AlreadyExists(format!(
                "container name {name:?} is reserved for {holder}"
            ))));
        }
        // A Target PID namespace is the target container's: it must run in
        // the same pod.
        let target_pid = if msg.config.security.pid_namespace == NamespaceMode::Target {
            let target = self
                .resolve(&msg.config.security.target_id)
                .and_then(|t| self.records.get(&t))
                .filter(|t| t.sandbox_id == pod_id && t.state == ContainerState::Running);
            match target {
                Some(t) => Some(t.pid),
                None => {
                    return Reply::Now(Err(Error::InvalidArgument(format!(
                        "target container {:?} is not running in pod {pod_id}",
                        msg.config.security.target_id
                    ))))
                }
            }
        } else {
            None
        };
        let id = match crate::ids::new_id() {
            Ok(id) => id,
            Err(e) => return Reply::Now(Err(e)),
        };
        let record = ContainerRecord {
            id: id.clone(),
            sandbox_id: pod_id.clone(),
            name: name.clone(),
            created_unix_nanos: crate::journal::unix_nanos(),
            config: msg.config.clone(),
            image_id: String::new(),
            state: ContainerState::Creating,
            started_unix_nanos: 0,
            finished_unix_nanos: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            log_path: String::new(),
            user: (0, 0, Vec::new()),
            stop_signal: 0,
            cgroups_path: String::new(),
        };
        if let Err(e) = self.records.put(record) {
            return Reply::Now(Err(e.into()));
        }
        self.reserved.insert(name.clone(), id.clone());
        let deps = self.deps.clone();
        let work = {
            let id = id.clone();
            async move {
                let mut undo = Undo {
                    deps: deps.clone(),
                    id: id.clone(),
                    rootfs: false,
                    task: false,
                };
                let made = make(deps, &mut undo, &id, &pod_id, msg.config, target_pid).await;
                if made.is_err() {
                    undo.run().await;
                }
                made
            }
        };
        Reply::later(work, move |me: &mut Self, made: Result<Made>| {
            me.reserved.remove(&name);
            let made = match made {
                Ok(m) => m,
                Err(e) => {
                    let _ = me.records.remove(&id);
                    return Err(e);
                }
            };
            let mut r = me
                .records
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::Internal(format!("container {id} vanished")))?;
            r.state = ContainerState::Created;
            r.image_id = made.image_id;
            r.log_path = made.log_path.display().to_string();
            r.user = made.user;
            r.pid = made.pid;
            r.stop_signal = made.stop_signal;
            r.cgroups_path = made.cgroups_path;
            let pod = r.sandbox_id.clone();
            me.records.put(r)?;
            me.publish(&id, &pod, Lifecycle::Created);
            Ok(id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_needs_a_user() {
        let check = super::super::validate::container;
        let mut config = ContainerConfig {
            name: "app".into(),
            image: "busybox".into(),
            ..Default::default()
        };
        check(&config).expect("plain");
        config.security.run_as_group = Some(1000);
        let err = check(&config).expect_err("group alone");
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("run_as_group")),
            "{err:?}"
        );
        config.security.run_as_user = Some(1000);
        check(&config).expect("with a uid");
        config.security.run_as_user = None;
        config.security.run_as_username = "nobody".into();
        check(&config).expect("with a user name");
    }

    #[test]
    fn stop_signals_read_as_docker_writes_them() {
        assert_eq!(signal_number("SIGTERM"), Some(15));
        assert_eq!(signal_number("QUIT"), Some(3));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("NOPE"), None);
    }
}
