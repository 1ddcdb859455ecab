//! The ImageActor shell: routes messages to the verbs (pull.rs, import.rs,
//! status.rs, remove.rs, fsinfo.rs). Pulls and imports run off the actor;
//! the actor records their outcome.

use super::backend::ImageBackend;
use super::import::{self, Imported};
use super::messages::*;
use super::pull::{self, Pulled};
use super::reference::ImageName;
use super::remove::run_collection;
use super::rootfs;
use super::store::{ImageRecord, RootfsRecord};
use crate::journal::{Journal, Table};
use crate::kernel::{Cx, Handles, Reply, Shell, Subsystem};
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};
use std::sync::Arc;

pub type ImageActor = Shell<Images>;

pub struct Images {
    pub(super) images: Table<ImageRecord>,
    pub(super) rootfs: Table<RootfsRecord>,
    pub(super) backend: Arc<ImageBackend>,
    /// A collection was refused while pulls were in flight: run it after
    /// the next recorded pull.
    pub(super) gc_due: bool,
}

impl Subsystem for Images {
    const NAME: &'static str = "image";
    type Deps = Arc<ImageBackend>;

    fn rebuild(backend: &Arc<ImageBackend>, journal: &Arc<dyn Journal>) -> Result<Self> {
        let mut me = Images {
            images: Table::open(journal, Self::NAME)?,
            rootfs: Table::open(journal, Self::NAME)?,
            backend: backend.clone(),
            gc_due: false,
        };
        // What interrupted pulls and imports left is dropped, unless some
        // are still running (this is a restart of the actor, not of
        // berthd): each holds the GC lock until its images are recorded.
        let busy = backend.gc_lock.try_write().is_err();
        if backend.pulls.is_empty() && backend.layers.is_empty() && !busy {
            backend.content.clean_ingest()?;
            backend.snapshots.clean_staging();
            if let Some(work) = me.collect()? {
                work();
            }
        }
        Ok(me)
    }

    fn records(&self) -> usize {
        self.images.len()
    }

    fn started(&mut self, ctx: &mut actix::Context<ImageActor>) {
        use actix::AsyncContext;
        ctx.run_interval(std::time::Duration::from_secs(10), |act, ctx| {
            if let Some(me) = act.state_mut() {
                me.sweep_rootfs(ctx);
            }
        });
    }
}

impl Images {
    /// Records a finished pull: the image gets the tag (taken from any image
    /// that had it) and the repo digest.
    /// The sandbox image as recorded, if it is whole: pinned, named, and
    /// its one snapshot on disk.
    fn sandbox_image(&self) -> Option<SandboxImage> {
        let name = super::sandbox_image::sandbox_image_name();
        let record = self
            .images
            .iter()
            .find(|r| r.pinned && r.repo_tags.contains(&name))?;
        let chain = record.chain_ids.first()?;
        self.backend.snapshots.has(chain).then(|| SandboxImage {
            id: record.id.clone(),
            rootfs: self.backend.snapshots.path(chain),
        })
    }

    fn record_pull(&mut self, p: &Pulled) -> Result<String> {
        let digests = [p.repo_digest.clone()];
        self.record_image(p, p.repo_tag.as_slice(), &digests)
    }

    /// Records an image a pull or an import stored, with its names: each
    /// tag is taken from any image that had it.
    fn record_image(&mut self, p: &Pulled, tags: &[String], digests: &[String]) -> Result<String> {
        let id = p.id.to_string();
        for tag in tags {
            let holders: Vec<ImageRecord> = self
                .images
                .iter()
                .filter(|r| r.id != id && r.repo_tags.contains(tag))
                .cloned()
                .collect();
            for mut old in holders {
                old.repo_tags.retain(|t| t != tag);
                tracing::info!(tag, from = %old.id, to = %id, "tag moved to another image");
                self.images.put(old)?;
            }
        }
        let mut rec = self
            .images
            .get(&id)
            .cloned()
            .unwrap_or_else(|| ImageRecord {
                id: id.clone(),
                repo_tags: Vec::new(),
                repo_digests: Vec::new(),
                size: 0,
                blobs: Vec::new(),
                chain_ids: Vec::new(),
                user: String::new(),
                pinned: false,
                created_unix_nanos: crate::journal::unix_nanos(),
            });
        for tag in tags {
            if !rec.repo_tags.contains(tag) {
                rec.repo_tags.push(tag.clone());
            }
        }
        for digest in digests {
            if !rec.repo_digests.contains(digest) {
                rec.repo_digests.push(digest.clone());
            }
        }
        for b in &p.blobs {
            if !rec.blobs.contains(b) {
                rec.blobs.push(b.clone());
            }
        }
        rec.chain_ids = p.chain_ids.clone();
        rec.size = p.size;
        rec.user = p.user.clone();
        self.images.put(rec)?;
        Ok(id)
    }
}

/// The blocking work of a collection, if one was started.
type Collection = Option<Box<dyn FnOnce() -> super::remove::Collected + Send>>;

/// A pull's answer, and the collection to run before giving it.
type AfterPull = (Result<String>, Collection);

/// An import's answer, and the collection to run before giving it.
type AfterImport = (Result<Vec<ImportedImage>>, Collection);

impl Images {
    /// Records a successful pull; after a failed one, collects what it
    /// stored, so that a failed pull leaves nothing behind. A collection
    /// that was due runs too.
    fn after_pull(&mut self, pulled: Result<Pulled>) -> Result<AfterPull> {
        let result = match pulled {
            Ok(p) => {
                let id = self.record_pull(&p);
                drop(p);
                if id.is_ok() && !self.gc_due {
                    return Ok((id, None));
                }
                id
            }
            Err(e) => Err(e),
        };
        let work = self
            .collect()?
            .map(|w| Box::new(w) as Box<dyn FnOnce() -> super::remove::Collected + Send>);
        Ok((result, work))
    }

    /// Records every image of a successful import. A collection always
    /// follows: after a failure it removes what the import stored, after a
    /// success what the archive held that no image uses (other platforms'
    /// blobs, docker's per-layer metadata).
    fn after_import(&mut self, imported: Result<Vec<Imported>>) -> Result<AfterImport> {
        let result = imported.and_then(|images| {
            let mut answer = Vec::with_capacity(images.len());
            for i in &images {
                let id = self.record_image(&i.image, &i.repo_tags, &i.repo_digests)?;
                tracing::info!(image = %id, tags = ?i.repo_tags, "image imported");
                answer.push(ImportedImage {
                    id,
                    repo_tags: i.repo_tags.clone(),
                });
            }
            Ok(answer)
        });
        // The images' holds on the GC lock are gone by now (dropped with
        // `images`), so the collection can start.
        let work = self
            .collect()?
            .map(|w| Box::new(w) as Box<dyn FnOnce() -> super::remove::Collected + Send>);
        Ok((result, work))
    }
}

impl Handles<PullImage> for Images {
    type Output = String;

    fn handle(&mut self, msg: PullImage, _cx: Cx<'_, Self>) -> Reply<Self, String> {
        let reference = match ImageName::parse(&msg.image) {
            Ok(ImageName::Reference(r)) => r,
            Ok(ImageName::Id(_)) => {
                return Reply::Now(Err(Error::InvalidArgument(format!(
                    "cannot pull {:?}: an image ID names no repository",
                    msg.image
                ))))
            }
            Err(e) => return Reply::Now(Err(e)),
        };
        let backend = self.backend.clone();
        let key = reference.to_string();
        let flight = self.backend.pulls.join(&key, move || async move {
            let start = std::time::Instant::now();
            let pulled = pull::pull(backend, reference, msg.auth).await;
            crate::metrics::pulled(pulled.as_ref().ok().map(|p| p.size), start.elapsed());
            pulled
        });
        Reply::Later(Box::pin(wrap_future(flight).then(
            |pulled: Result<Pulled>, act: &mut ImageActor, _| {
                let outcome = match act.state_mut() {
                    None => Err(crate::kernel::restarting(<Self as Subsystem>::NAME)),
                    Some(me) => me.after_pull(pulled),
                };
                wrap_future(async move {
                    let (result, collection) = outcome?;
                    run_collection(collection).await?;
                    result
                })
            },
        )))
    }
}

impl Handles<ImportImage> for Images {
    type Output = Vec<ImportedImage>;

    fn handle(&mut self, msg: ImportImage, _cx: Cx<'_, Self>) -> Reply<Self, Vec<ImportedImage>> {
        if !msg.path.is_absolute() {
            return Reply::Now(Err(Error::InvalidArgument(format!(
                "cannot import {}: the path must be absolute",
                msg.path.display()
            ))));
        }
        tracing::info!(path = %msg.path.display(), "importing");
        // A task of its own: the import goes on (and settles) even if this
        // call is dropped, as a pull does.
        let task = tokio::spawn(import::import(self.backend.clone(), msg.path));
        let imported = async move {
            task.await
                .unwrap_or_else(|e| Err(Error::Internal(format!("import task: {e}"))))
        };
        Reply::Later(Box::pin(wrap_future(imported).then(
            |imported: Result<Vec<Imported>>, act: &mut ImageActor, _| {
                let outcome = match act.state_mut() {
                    None => Err(crate::kernel::restarting(<Self as Subsystem>::NAME)),
                    Some(me) => me.after_import(imported),
                };
                wrap_future(async move {
                    let (result, collection) = outcome?;
                    run_collection(collection).await?;
                    result
                })
            },
        )))
    }
}

impl Handles<ImageStatus> for Images {
    type Output = Option<ImageInfo>;

    fn handle(&mut self, msg: ImageStatus, _cx: Cx<'_, Self>) -> Reply<Self, Option<ImageInfo>> {
        Reply::Now(self.status(&msg.image, msg.verbose))
    }
}

impl Handles<ListImages> for Images {
    type Output = Vec<ImageInfo>;

    fn handle(&mut self, msg: ListImages, _cx: Cx<'_, Self>) -> Reply<Self, Vec<ImageInfo>> {
        Reply::Now(self.list(msg.image.as_deref()))
    }
}

impl Handles<RemoveImage> for Images {
    type Output = ();

    fn handle(&mut self, msg: RemoveImage, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        if let Err(e) = self.remove(&msg.image) {
            return Reply::Now(Err(e));
        }
        match self.collect() {
            Err(e) => Reply::Now(Err(e)),
            Ok(work) => Reply::off(async move { run_collection(work).await.map(|_| ()) }),
        }
    }
}

impl Handles<ImageFsInfo> for Images {
    type Output = FsUsage;

    fn handle(&mut self, _msg: ImageFsInfo, _cx: Cx<'_, Self>) -> Reply<Self, FsUsage> {
        let b = self.backend.clone();
        Reply::off(async move {
            tokio::task::spawn_blocking(move || {
                let snapshots = b.snapshots.dir();
                let content = b.config.root.join("content");
                super::fsinfo::usage(snapshots, &[snapshots, &content])
            })
            .await
            .map_err(|e| Error::Internal(format!("image fs usage: {e}")))
        })
    }
}

impl Handles<PrepareRootfs> for Images {
    type Output = std::path::PathBuf;

    fn handle(&mut self, msg: PrepareRootfs, _cx: Cx<'_, Self>) -> Reply<Self, std::path::PathBuf> {
        if let Some(r) = self.rootfs.get(&msg.container_id) {
            if rootfs::is_mounted(&r.target) {
                return Reply::Now(Ok(r.target.clone().into()));
            }
        }
        let record = match self.rootfs_record(
            &msg.container_id,
            &msg.image,
            msg.read_only,
            msg.volume_of,
            msg.userns,
        ) {
            Ok(r) => r,
            Err(e) => return Reply::Now(Err(e)),
        };
        let snapshots = match self.snapshot_paths(&record) {
            Ok(s) => s,
            Err(e) => return Reply::Now(Err(e)),
        };
        // Journalled before the mount: recovery undoes a mount nobody
        // finished with.
        if let Err(e) = self.rootfs.put(record.clone()) {
            return Reply::Now(Err(e.into()));
        }
        let id = msg.container_id;
        let work = async move {
            let r = record.clone();
            let diff = msg.diff;
            tokio::task::spawn_blocking(move || {
                let made = match &diff {
                    Some(d) => rootfs::apply_diff(d, std::path::Path::new(&r.upper))
                        .and_then(|()| rootfs::mount_rootfs(&r, &snapshots)),
                    None => rootfs::mount_rootfs(&r, &snapshots),
                };
                match made {
                    Ok(()) => Ok(std::path::PathBuf::from(&r.target)),
                    Err(e) => {
                        let _ = rootfs::remove_rootfs(&r);
                        Err(e)
                    }
                }
            })
            .await
            .map_err(|e| Error::Internal(format!("rootfs task: {e}")))?
        };
        Reply::Later(Box::pin(wrap_future(work).map(
            move |res: Result<std::path::PathBuf>, act: &mut ImageActor, _| {
                if res.is_err() {
                    if let Some(me) = act.state_mut() {
                        let _ = me.rootfs.remove(&id);
                    }
                }
                res
            },
        )))
    }
}

impl Handles<RemoveRootfs> for Images {
    type Output = ();

    fn handle(&mut self, msg: RemoveRootfs, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        // The container's own root filesystem and its image volumes.
        let records: Vec<RootfsRecord> = self
            .rootfs
            .iter()
            .filter(|r| r.owner() == msg.container_id)
            .cloned()
            .collect();
        if records.is_empty() {
            return Reply::Now(Ok(()));
        }
        let work = async move {
            tokio::task::spawn_blocking(move || {
                records
                    .into_iter()
                    .map(|r| (rootfs::remove_rootfs(&r), r.container_id))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| Error::Internal(format!("rootfs task: {e}")))
        };
        Reply::later(
            work,
            move |me: &mut Self, res: Result<Vec<(Result<()>, String)>>| {
                let mut first_error = None;
                for (removed, id) in res? {
                    match removed {
                        Ok(()) => {
                            me.rootfs.remove(&id)?;
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                first_error.map_or(Ok(()), Err)
            },
        )
    }
}

impl Handles<EnsureSandboxImage> for Images {
    type Output = SandboxImage;

    fn handle(&mut self, msg: EnsureSandboxImage, _cx: Cx<'_, Self>) -> Reply<Self, SandboxImage> {
        if !msg.rebuild {
            if let Some(made) = self.sandbox_image() {
                return Reply::Now(Ok(made));
            }
        }
        let backend = self.backend.clone();
        let work = async move {
            tokio::task::spawn_blocking(move || {
                super::sandbox_image::build(&backend, &msg.pause_binary)
            })
            .await
            .map_err(|e| Error::Internal(format!("sandbox image task: {e}")))?
        };
        Reply::later(work, move |me: &mut Self, built: Result<Pulled>| {
            let built = built?;
            let id = me.record_pull(&built)?;
            let mut record = me
                .images
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::Internal("sandbox image vanished".into()))?;
            if !record.pinned {
                // kubelet's image GC leaves pinned images alone.
                record.pinned = true;
                me.images.put(record)?;
            }
            let rootfs = me.backend.snapshots.path(&built.chain_ids[0]);
            Ok(SandboxImage { id, rootfs })
        })
    }
}

impl Handles<super::recover::RecoverRootfs> for Images {
    type Output = crate::kernel::Recovered;

    fn handle(
        &mut self,
        msg: super::recover::RecoverRootfs,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, crate::kernel::Recovered> {
        self.recover_rootfs(msg.containers)
    }
}

impl Handles<super::recover::ListRootfs> for Images {
    type Output = Vec<RootfsRecord>;

    fn handle(
        &mut self,
        _msg: super::recover::ListRootfs,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, Vec<RootfsRecord>> {
        Reply::Now(Ok(self.rootfs.iter().cloned().collect()))
    }
}
