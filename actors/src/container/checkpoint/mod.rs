//! CheckpointContainer, and restore: a container created from a
//! checkpoint archive (its image field the archive's path, as CRI-O takes
//! it) is restored by CRIU at start instead of run afresh.
//!
//! Checkpoint: CRIU (through the runtime, in the container's shim) dumps
//! the running container's processes, leaving them running; berth adds the
//! container's config and spec and its root filesystem's changes, and
//! writes the archive at `location` whole or not at all. CRIU is probed
//! once; where it cannot work, both answer FAILED_PRECONDITION with its
//! reason before anything is made.

pub mod archive;
pub mod criu;

use super::actor::Containers;
use super::messages::CheckpointContainer;
use super::store::ContainerRecord;
use crate::kernel::Reply;
use crate::sandbox::messages::PodSandboxStatus;
use crate::shim::messages::CheckpointTask;
use crate::{Error, Result};
use archive::ConfigDump;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A working directory under `<state>/checkpoints/`, removed when dropped.
pub(super) struct Scratch(pub PathBuf);

impl Scratch {
    pub(super) fn new(state: &Path, name: &str) -> Result<Scratch> {
        let dir = state
            .join("checkpoints")
            .join(format!("{name}-{}", crate::journal::unix_nanos()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Internal(format!("create {}: {e}", dir.display())))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        crate::image::snapshots::remove_tree(&self.0);
    }
}

/// The checkpoint archive an image field names, if it names one: an
/// absolute path to a file (an image name never starts with `/`).
pub(super) fn restore_source(image: &str) -> Option<PathBuf> {
    let p = Path::new(image);
    (p.is_absolute() && p.is_file()).then(|| p.to_path_buf())
}

/// Asks the probe off the actor (the first answer runs `criu check`).
pub(super) async fn criu_usable(probe: Arc<criu::CriuProbe>, what: &'static str) -> Result<()> {
    tokio::task::spawn_blocking(move || probe.usable(what))
        .await
        .map_err(|e| Error::Internal(format!("criu probe task: {e}")))?
}

fn time_text(unix_nanos: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(unix_nanos.max(0) as u64);
    berth_protocol::timefmt::rfc3339_nano(t)
}

fn config_dump(r: &ContainerRecord, runtime: &str) -> ConfigDump {
    ConfigDump {
        id: r.id.clone(),
        name: r.config.name.clone(),
        rootfs_image: r.config.image.clone(),
        rootfs_image_ref: r.image_id.clone(),
        rootfs_image_name: r.config.image.clone(),
        runtime: runtime.to_string(),
        created_time: time_text(r.created_unix_nanos),
        checkpointed_time: berth_protocol::timefmt::rfc3339_nano(SystemTime::now()),
    }
}

impl Containers {
    pub(super) fn checkpoint(&mut self, msg: CheckpointContainer) -> Reply<Self, ()> {
        if let Err(e) = crate::checked::absolute("location", &msg.location) {
            return Reply::Now(Err(e));
        }
        let location = PathBuf::from(&msg.location);
        if location.is_dir() {
            return Reply::Now(Err(Error::InvalidArgument(format!(
                "location {} is a directory: it names the archive to write",
                msg.location
            ))));
        }
        let record = match self.running(&msg.id).and_then(|full| {
            self.records
                .get(&full)
                .cloned()
                .ok_or(Error::NotFound(full))
        }) {
            Ok(r) => r,
            Err(e) => return Reply::Now(Err(e)),
        };
        let deps = self.deps.clone();
        let work = async move {
            criu_usable(deps.criu.clone(), "CheckpointContainer").await?;
            let scratch = Scratch::new(&deps.state, &record.id)?;
            let images = scratch.0.join(archive::CHECKPOINT_DIR);
            std::fs::create_dir_all(&images)
                .map_err(|e| Error::Internal(format!("create {}: {e}", images.display())))?;
            deps.shim
                .call(CheckpointTask {
                    id: record.id.clone(),
                    images,
                })
                .await?;
            let bundle = crate::shim::bundle_dir(&deps.state, &record.id);
            let upper = deps.rootfs_dir.join(&record.id).join("upper");
            let handler = deps
                .sandbox
                .call(PodSandboxStatus {
                    id: record.sandbox_id.clone(),
                })
                .await
                .map(|p| p.runtime_handler)
                .unwrap_or_default();
            let handler = if handler.is_empty() {
                "runc".to_string()
            } else {
                handler
            };
            tokio::task::spawn_blocking(move || {
                let spec = std::fs::read(bundle.join(crate::shim::launch::SPEC_FILE))
                    .map_err(|e| Error::Internal(format!("read the container's spec: {e}")))?;
                archive::write_parts(&scratch.0, &config_dump(&record, &handler), &spec, &upper)?;
                archive::pack(&scratch.0, &location)?;
                tracing::info!(container = %record.id, location = %location.display(), "container checkpointed");
                drop(scratch);
                Ok(())
            })
            .await
            .map_err(|e| Error::Internal(format!("checkpoint task: {e}")))?
        };
        let limit = (msg.timeout > 0).then(|| Duration::from_secs(msg.timeout as u64));
        Reply::off(async move {
            match limit {
                None => work.await,
                Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                    Err(Error::DeadlineExceeded(format!(
                        "checkpoint not done in {}s",
                        limit.as_secs()
                    )))
                }),
            }
        })
    }
}
