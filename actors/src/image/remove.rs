//! RemoveImage and garbage collection. Removing an image drops it with all
//! its names; then every blob and snapshot no image refers to is removed.
//!
//! Removing an image that containers use is allowed, as in containerd: a
//! container's root filesystem keeps its own snapshots, so it goes on
//! running; the image's names are gone and its unused content is collected.

use super::actor::Images;
use super::backend::ImageBackend;
use super::reference::Digest;
use crate::{Error, Result};
use std::collections::BTreeSet;
use std::sync::Arc;

/// What a collection found unreferenced and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    pub blobs: Vec<Digest>,
    pub snapshots: Vec<Digest>,
}

impl Images {
    /// Drops the image's record; the caller collects afterwards. An unknown
    /// image is success (RemoveImage is idempotent for kubelet's retries).
    pub(super) fn remove(&mut self, name: &str) -> Result<Option<String>> {
        let Some(record) = self.find(name)?.cloned() else {
            return Ok(None);
        };
        if record.pinned {
            return Err(Error::FailedPrecondition(format!(
                "image {} is pinned: it is the sandbox image every pod runs from",
                record.id
            )));
        }
        if let Some(v) = self
            .rootfs
            .iter()
            .find(|r| r.is_volume() && r.image_id == record.id)
        {
            return Err(Error::FailedPrecondition(format!(
                "image {} is in use: it is mounted as an image volume in container {}",
                record.id,
                v.owner()
            )));
        }
        self.images.remove(&record.id)?;
        tracing::info!(image = %record.id, tags = ?record.repo_tags, "image removed");
        Ok(Some(record.id))
    }

    /// Every blob and snapshot some image refers to.
    fn referenced(&self) -> (BTreeSet<Digest>, BTreeSet<Digest>) {
        let mut blobs = BTreeSet::new();
        let mut snapshots = BTreeSet::new();
        for r in self.images.iter() {
            blobs.extend(r.blobs.iter().cloned());
            snapshots.extend(r.chain_ids.iter().cloned());
        }
        // A container's root filesystem keeps its snapshots, whatever
        // became of its image.
        for r in self.rootfs.iter() {
            snapshots.extend(r.chain_ids.iter().cloned());
        }
        (blobs, snapshots)
    }

    /// Starts a collection if no pull is in flight, returning the blocking
    /// work that removes the unreferenced content; otherwise marks one as
    /// due after the next recorded pull.
    pub(super) fn collect(
        &mut self,
    ) -> Result<Option<impl FnOnce() -> Collected + Send + 'static>> {
        let Ok(guard) = self.backend.gc_lock.clone().try_write_owned() else {
            tracing::debug!("pulls in flight: collection postponed");
            self.gc_due = true;
            return Ok(None);
        };
        self.gc_due = false;
        let (blobs, snapshots) = self.referenced();
        let backend: Arc<ImageBackend> = self.backend.clone();
        let dead_blobs: Vec<Digest> = backend
            .content
            .list()?
            .into_iter()
            .filter(|d| !blobs.contains(d))
            .collect();
        let dead_snapshots: Vec<Digest> = backend
            .snapshots
            .list()?
            .into_iter()
            .filter(|d| !snapshots.contains(d))
            .collect();
        Ok(Some(move || {
            for d in &dead_blobs {
                if let Err(e) = backend.content.remove(d) {
                    tracing::warn!(blob = %d, error = %e, "cannot remove blob");
                }
            }
            for s in &dead_snapshots {
                backend.snapshots.remove(s);
            }
            drop(guard);
            if !dead_blobs.is_empty() || !dead_snapshots.is_empty() {
                tracing::info!(
                    blobs = dead_blobs.len(),
                    snapshots = dead_snapshots.len(),
                    "collected unreferenced image content"
                );
            }
            Collected {
                blobs: dead_blobs,
                snapshots: dead_snapshots,
            }
        }))
    }
}

/// Runs a collection's removals on the blocking pool.
pub(super) async fn run_collection(
    work: Option<impl FnOnce() -> Collected + Send + 'static>,
) -> Result<Collected> {
    match work {
        None => Ok(Collected::default()),
        Some(w) => tokio::task::spawn_blocking(w)
            .await
            .map_err(|e| Error::Internal(format!("collection task: {e}"))),
    }
}
