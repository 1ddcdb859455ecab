//! ImportImage: loading images from a tarball on berthd's host, for nodes
//! that cannot reach a registry. Two formats are read, either of them as a
//! plain tar or compressed as a whole (gzip or zstd, told by the first
//! bytes):
//!
//! - An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), as
//!   `ctr export`, skopeo, buildx and docker 25+ write it. Each entry of
//!   `index.json` is an image, or an index of which the node's platform is
//!   taken. An entry's name is its `io.containerd.image.name` annotation,
//!   or its `org.opencontainers.image.ref.name` when that is a whole
//!   reference. A ref name that is only a tag (`v1`, what the OCI spec
//!   suggests) has no repository to belong to: such an image is imported
//!   under its ID alone, with no tag and no repo digest.
//! - A `docker save` archive (`manifest.json`, a config and one tar per
//!   layer). An OCI manifest is made up for each image and stored, so that
//!   the image has a `repo@digest` name as a pulled one does.
//!
//! An archive may be large, so it is never held in memory: the first pass
//! streams every `blobs/sha256/` member into the content store (its digest
//! checked on the way) and hashes the other members; a second pass, for
//! docker archives only, stores the layer tars the images need, now that
//! their digests are known. Layers are then unpacked from the content store
//! into snapshots exactly as a pull unpacks them, sharing the work with a
//! pull of the same layer. The images are recorded by the actor; until then
//! the import holds off garbage collection, and after a failure the
//! collection removes what it stored.

use super::backend::ImageBackend;
use super::content::Hashing;
use super::manifest::{Descriptor, ImageConfigFile, Manifest, Platform};
use super::pull::Pulled;
use super::reference::{Digest, Reference};
use super::registry::OCI_MANIFEST;
use super::snapshots::chain_ids;
use super::unpack;
use crate::{Error, Result};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(super) const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(super) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(super) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The annotations an OCI layout names its images with.
pub(super) const CONTAINERD_NAME: &str = "io.containerd.image.name";
pub(super) const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Members other than blobs up to this size are kept in memory during the
/// first pass (configs and small layers of docker archives), within an
/// overall budget; the rest are stored by the second pass.
pub(super) const SMALL_MEMBER: u64 = 4 << 20;
pub(super) const SMALL_BUDGET: u64 = 64 << 20;
/// The archive's own documents (index.json, manifest.json, oci-layout) are
/// always kept, up to this size.
pub(super) const DOCUMENT_LIMIT: u64 = 16 << 20;

/// One image an import stored, for the actor to record.
pub(super) struct Imported {
    /// The image's content, as a pull describes it. A pull gives an image
    /// one name, an import any number: they are in the fields below, and
    /// this one's `repo_tag` is None and `repo_digest` empty.
    pub image: Pulled,
    /// `repo:tag` names, normalised.
    pub repo_tags: Vec<String>,
    /// `repo@digest` names: the digest of the manifest (or index) each
    /// name resolved to in the archive.
    pub repo_digests: Vec<String>,
}

/// The work of one import; runs off the actor.
pub(super) async fn import(backend: Arc<ImageBackend>, path: PathBuf) -> Result<Vec<Imported>> {
    let hold = Arc::new(backend.gc_lock.clone().read_owned().await);
    let label = path.display().to_string();
    let b = backend.clone();
    let plans = tokio::task::spawn_blocking(move || read_archive(&b, &path))
        .await
        .map_err(|e| Error::Internal(format!("import task: {e}")))??;

    // Each distinct layer once, even when several images of the archive
    // share it.
    let mut seen = HashSet::new();
    let layers: Vec<LayerPlan> = plans
        .iter()
        .flat_map(|p| p.layers.iter())
        .filter(|l| seen.insert(l.chain.clone()))
        .cloned()
        .collect();
    let jobs = layers.into_iter().map(|layer| {
        let backend = backend.clone();
        async move {
            if backend.snapshots.has(&layer.chain) {
                return Ok(());
            }
            let b = backend.clone();
            let key = layer.chain.to_string();
            // Under the same key as a pull's layer, so that an import and a
            // pull of the same layer unpack it once.
            backend
                .layers
                .join(&key, move || async move {
                    tokio::task::spawn_blocking(move || unpack_stored(&b, &layer))
                        .await
                        .map_err(|e| Error::Internal(format!("unpack task: {e}")))?
                })
                .await
        }
    });
    // Every layer settles before the import answers, even after a failure,
    // so that nothing is still being written when the actor collects.
    let outcomes: Vec<Result<()>> = futures::stream::iter(jobs)
        .buffer_unordered(backend.config.max_concurrent_downloads.max(1))
        .collect()
        .await;
    outcomes
        .into_iter()
        .collect::<Result<Vec<()>>>()
        .map_err(|e| within(&label, e))?;

    let b = backend.clone();
    tokio::task::spawn_blocking(move || sync_root(&b))
        .await
        .map_err(|e| Error::Internal(format!("sync task: {e}")))?;
    Ok(plans
        .into_iter()
        .map(|p| p.into_imported(hold.clone()))
        .collect())
}

/// An image found in the archive, with its content stored but its layers
/// not yet unpacked.
pub(super) struct ImagePlan {
    pub(super) id: Digest,
    pub(super) repo_tags: Vec<String>,
    pub(super) repo_digests: Vec<String>,
    /// Index, manifest, config and layer blobs.
    pub(super) blobs: Vec<Digest>,
    pub(super) layers: Vec<LayerPlan>,
    pub(super) size: u64,
    pub(super) user: String,
}

#[derive(Clone)]
pub(super) struct LayerPlan {
    /// The layer blob in the content store.
    pub(super) blob: Digest,
    pub(super) diff_id: Digest,
    pub(super) chain: Digest,
}

impl ImagePlan {
    /// Adds what another entry of the archive says of the same image
    /// (another name for it).
    fn merge(&mut self, other: ImagePlan) {
        for t in other.repo_tags {
            push_new(&mut self.repo_tags, t);
        }
        for d in other.repo_digests {
            push_new(&mut self.repo_digests, d);
        }
        for b in other.blobs {
            push_new(&mut self.blobs, b);
        }
    }

    fn into_imported(self, hold: Arc<tokio::sync::OwnedRwLockReadGuard<()>>) -> Imported {
        Imported {
            image: Pulled {
                id: self.id,
                repo_tag: None,
                repo_digest: String::new(),
                blobs: self.blobs,
                chain_ids: self.layers.iter().map(|l| l.chain.clone()).collect(),
                size: self.size,
                user: self.user,
                hold,
            },
            repo_tags: self.repo_tags,
            repo_digests: self.repo_digests,
        }
    }
}

pub(super) fn push_new<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Images with the same ID (several names for one image) become one.
pub(super) fn merge_plans(plans: Vec<ImagePlan>) -> Vec<ImagePlan> {
    let mut out: Vec<ImagePlan> = Vec::new();
    for p in plans {
        match out.iter_mut().find(|o| o.id == p.id) {
            Some(o) => o.merge(p),
            None => out.push(p),
        }
    }
    out
}

/// Gives an error's message a prefix saying where it happened, keeping its
/// kind.
pub(super) fn within(what: &str, e: Error) -> Error {
    let m = |m: String| format!("{what}: {m}");
    match e {
        Error::InvalidArgument(s) => Error::InvalidArgument(m(s)),
        Error::NotFound(s) => Error::NotFound(m(s)),
        Error::AlreadyExists(s) => Error::AlreadyExists(m(s)),
        Error::FailedPrecondition(s) => Error::FailedPrecondition(m(s)),
        Error::DeadlineExceeded(s) => Error::DeadlineExceeded(m(s)),
        Error::ResourceExhausted(s) => Error::ResourceExhausted(m(s)),
        Error::Unavailable(s) => Error::Unavailable(m(s)),
        Error::Unauthenticated(s) => Error::Unauthenticated(m(s)),
        Error::DataLoss(s) => Error::DataLoss(m(s)),
        Error::Internal(s) => Error::Internal(m(s)),
        // Where a journal failure happened does not change what it is.
        Error::Journal(j) => Error::Journal(j),
    }
}

mod archive;
mod docker_save;
mod oci_layout;

use archive::*;
use docker_save::*;
use oci_layout::*;

/// Unpacks a stored layer into its snapshot: into a staging directory
/// first, committed only once the tar's digest is the diff ID. Unsafe
/// entries fail it as they fail a pull. Blocking.
pub(super) fn unpack_stored(backend: &ImageBackend, layer: &LayerPlan) -> Result<()> {
    if backend.snapshots.has(&layer.chain) {
        return Ok(());
    }
    let blob = &layer.blob;
    let path = backend.content.path(blob);
    let file =
        File::open(&path).map_err(|e| Error::Internal(format!("open {}: {e}", path.display())))?;
    let staging = backend.snapshots.staging()?;
    let corrupt = |e: io::Error| Error::DataLoss(format!("layer {blob}: {e}"));
    let mut hashed = Hashing::new(unpack::decompress(file).map_err(corrupt)?);
    unpack::apply(&mut hashed, staging.path()).map_err(|e| match e {
        Error::FailedPrecondition(m) => Error::FailedPrecondition(format!("layer {blob}: {m}")),
        other => other,
    })?;
    let (got, _) = hashed.finish().map_err(corrupt)?;
    if got != layer.diff_id {
        return Err(Error::DataLoss(format!(
            "layer {blob} unpacks to {got}, not the diff ID {} its config names",
            layer.diff_id
        )));
    }
    backend.snapshots.commit(staging, &layer.chain)
}

/// Makes what the import wrote durable before the images are recorded.
pub(super) fn sync_root(backend: &ImageBackend) {
    if let Ok(f) = File::open(&backend.config.root) {
        use std::os::fd::AsRawFd;
        if let Err(e) = nix::unistd::syncfs(f.as_raw_fd()) {
            tracing::warn!(error = %e, "syncfs after import");
        }
    }
}

#[cfg(test)]
mod tests;
