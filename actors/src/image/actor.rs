//! The ImageActor shell: routes messages to the verbs (pull.rs, status.rs,
//! remove.rs, fsinfo.rs). Pulls run off the actor; the actor records their
//! outcome.

use super::backend::ImageBackend;
use super::messages::*;
use super::pull::{self, Pulled};
use super::reference::ImageName;
use super::remove::run_collection;
use super::store::ImageRecord;
use crate::journal::{Journal, Table};
use crate::kernel::{Cx, Handles, Reply, Shell, Subsystem};
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};
use std::sync::Arc;

pub type ImageActor = Shell<Images>;

pub struct Images {
    pub(super) images: Table<ImageRecord>,
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
            backend: backend.clone(),
            gc_due: false,
        };
        // What interrupted pulls left is dropped, unless pulls are still
        // running (this is a restart of the actor, not of berthd).
        if backend.pulls.is_empty() && backend.layers.is_empty() {
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
}

impl Images {
    /// Records a finished pull: the image gets the tag (taken from any image
    /// that had it) and the repo digest.
    fn record_pull(&mut self, p: &Pulled) -> Result<String> {
        let id = p.id.to_string();
        if let Some(tag) = &p.repo_tag {
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
        if let Some(tag) = &p.repo_tag {
            if !rec.repo_tags.contains(tag) {
                rec.repo_tags.push(tag.clone());
            }
        }
        if !rec.repo_digests.contains(&p.repo_digest) {
            rec.repo_digests.push(p.repo_digest.clone());
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

/// A pull's answer, and the collection to run before giving it.
type AfterPull = (
    Result<String>,
    Option<Box<dyn FnOnce() -> super::remove::Collected + Send>>,
);

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
        let flight = self
            .backend
            .pulls
            .join(&key, move || pull::pull(backend, reference, msg.auth));
        Reply::Later(Box::pin(wrap_future(flight).then(
            |pulled: Result<Pulled>, act: &mut ImageActor, _| {
                let outcome = match act.state_mut() {
                    None => Err(Error::Unavailable(
                        "the image actor is restarting; retry".into(),
                    )),
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
            Ok(work) => Reply::Later(Box::pin(wrap_future(async move {
                run_collection(work).await.map(|_| ())
            }))),
        }
    }
}

impl Handles<ImageFsInfo> for Images {
    type Output = FsUsage;

    fn handle(&mut self, _msg: ImageFsInfo, _cx: Cx<'_, Self>) -> Reply<Self, FsUsage> {
        let b = self.backend.clone();
        Reply::Later(Box::pin(wrap_future(async move {
            tokio::task::spawn_blocking(move || {
                let snapshots = b.snapshots.dir();
                let content = b.config.root.join("content");
                super::fsinfo::usage(snapshots, &[snapshots, &content])
            })
            .await
            .map_err(|e| Error::Internal(format!("image fs usage: {e}")))
        })))
    }
}
