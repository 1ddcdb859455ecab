//! Root filesystem recovery: a rootfs whose container is gone (a
//! CreateContainer cut short, a removal half done) is unmounted and its
//! writable layer removed; mounts and layers under berth's rootfs
//! directories that no record knows are removed too. (Half-pulled images
//! are dropped when the actor builds its state: see `Images::rebuild`.)

use super::actor::{ImageActor, Images};
use super::rootfs::remove_rootfs;
use super::store::RootfsRecord;
use crate::kernel::{short, Recovered, Reply, Swept};
use crate::{Error, Result};
use actix::fut::wrap_future;
use actix::{AsyncContext, Message};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Removes every rootfs whose container is not in `containers`.
#[derive(Debug, Clone, Default)]
pub struct RecoverRootfs {
    pub containers: BTreeSet<String>,
}

impl Message for RecoverRootfs {
    type Result = Result<Recovered>;
}

/// Every rootfs record (admin consistency check).
#[derive(Debug, Clone, Default)]
pub struct ListRootfs;

impl Message for ListRootfs {
    type Result = Result<Vec<RootfsRecord>>;
}

impl Images {
    pub(super) fn recover_rootfs(
        &mut self,
        containers: BTreeSet<String>,
    ) -> Reply<Self, Recovered> {
        let (orphans, kept): (Vec<RootfsRecord>, Vec<RootfsRecord>) = self
            .rootfs
            .iter()
            .cloned()
            .partition(|r| !containers.contains(r.owner()));
        let known: BTreeSet<String> = kept.iter().map(|r| r.container_id.clone()).collect();
        let strays = list_strays(&self.rootfs_dirs(), &known);
        // The orphans' own directories go with their records.
        let strays: Vec<PathBuf> = strays
            .into_iter()
            .filter(|p| {
                !orphans.iter().any(|o| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy() == o.container_id)
                })
            })
            .collect();
        let kept = kept.len();
        let work = async move {
            tokio::task::spawn_blocking(move || {
                let removed: Vec<(String, Result<()>)> = orphans
                    .into_iter()
                    .map(|r| (r.container_id.clone(), remove_rootfs(&r)))
                    .collect();
                let strays = remove_strays(strays);
                (removed, strays)
            })
            .await
            .map_err(|e| Error::Internal(format!("rootfs task: {e}")))
        };
        Reply::later(work, move |me: &mut Self, res: Result<Swept>| {
            let (removed, strays) = res?;
            let mut report = Recovered {
                kept,
                fixed: Vec::new(),
            };
            for (id, outcome) in removed {
                match outcome {
                    Ok(()) => {
                        me.rootfs.remove(&id)?;
                        report.fixed(format!("rootfs of {}: no container, removed", short(&id)));
                    }
                    Err(e) => report.fixed(format!(
                        "rootfs of {}: no container, not removed: {e}",
                        short(&id)
                    )),
                }
            }
            for dir in strays {
                report.fixed(format!("{}: no rootfs record, removed", dir.display()));
            }
            Ok(report)
        })
    }
}

/// Entries of `dirs` whose name is not in `known`. Listed on the actor,
/// against the records as they are then: a rootfs being mounted has its
/// record already.
fn list_strays(dirs: &[PathBuf], known: &BTreeSet<String>) -> Vec<PathBuf> {
    dirs.iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter(|e| !known.contains(e.file_name().to_string_lossy().as_ref()))
        .map(|e| e.path())
        .collect()
}

/// Unmounts and removes `paths`; answers those that went.
fn remove_strays(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths
        .into_iter()
        .filter(|path| {
            let record = RootfsRecord {
                container_id: String::new(),
                image_id: String::new(),
                chain_ids: Vec::new(),
                target: path.display().to_string(),
                upper: path.join("upper").display().to_string(),
                work: String::new(),
                read_only: false,
                ..Default::default()
            };
            match remove_rootfs(&record) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "cannot remove a stray rootfs");
                    false
                }
            }
        })
        .collect()
}

impl Images {
    fn rootfs_dirs(&self) -> [PathBuf; 2] {
        [
            self.backend.config.state.join("rootfs"),
            self.backend.config.root.join("rootfs"),
        ]
    }

    /// Removes root filesystems no record owns: left by a mount that a
    /// restart of this actor cut short and that finished after the
    /// container's rootfs was undone. Runs on a timer.
    pub(super) fn sweep_rootfs(&mut self, ctx: &mut actix::Context<ImageActor>) {
        let known: BTreeSet<String> = self.rootfs.iter().map(|r| r.container_id.clone()).collect();
        let strays = list_strays(&self.rootfs_dirs(), &known);
        if strays.is_empty() {
            return;
        }
        ctx.spawn(wrap_future(async move {
            if let Ok(gone) = tokio::task::spawn_blocking(move || remove_strays(strays)).await {
                for p in gone {
                    tracing::warn!(dir = %p.display(), "removed a rootfs no record owns");
                }
            }
        }));
    }
}
