//! Root filesystem recovery: a rootfs whose container is gone (a
//! CreateContainer cut short, a removal half done) is unmounted and its
//! writable layer removed; mounts and layers under berth's rootfs
//! directories that no record knows are removed too. (Half-pulled images
//! are dropped when the actor builds its state: see `Images::rebuild`.)

use super::actor::{ImageActor, Images};
use super::rootfs::{self, remove_rootfs};
use super::store::RootfsRecord;
use crate::kernel::{short, Recovered, Reply, Swept};
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};
use actix::Message;
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
            .partition(|r| !containers.contains(&r.container_id));
        let known: BTreeSet<String> = kept.iter().map(|r| r.container_id.clone()).collect();
        let dirs = [
            self.backend.config.state.join("rootfs"),
            self.backend.config.root.join("rootfs"),
        ];
        let kept = kept.len();
        let work = async move {
            tokio::task::spawn_blocking(move || {
                let removed: Vec<(String, Result<()>)> = orphans
                    .into_iter()
                    .map(|r| (r.container_id.clone(), remove_rootfs(&r)))
                    .collect();
                let strays = stray_dirs(&dirs, &known);
                (removed, strays)
            })
            .await
            .map_err(|e| Error::Internal(format!("rootfs task: {e}")))
        };
        Reply::Later(Box::pin(wrap_future(work).map(
            move |res: Result<Swept>, act: &mut ImageActor, _| {
                let (removed, strays) = res?;
                let me = act.state_mut().ok_or_else(|| {
                    Error::Unavailable("the image actor is restarting; retry".into())
                })?;
                let mut report = Recovered {
                    kept,
                    fixed: Vec::new(),
                };
                for (id, outcome) in removed {
                    match outcome {
                        Ok(()) => {
                            me.rootfs.remove(&id)?;
                            report
                                .fixed(format!("rootfs of {}: no container, removed", short(&id)));
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
            },
        )))
    }
}

/// Unmounts and removes entries of `dirs` whose name is not in `known`.
fn stray_dirs(dirs: &[PathBuf], known: &BTreeSet<String>) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if known.contains(&name) {
                continue;
            }
            let path = e.path();
            let record = RootfsRecord {
                container_id: name,
                image_id: String::new(),
                chain_ids: Vec::new(),
                target: path.display().to_string(),
                upper: path.join("upper").display().to_string(),
                work: String::new(),
                read_only: false,
            };
            if rootfs::is_mounted(&record.target) || path.exists() {
                match remove_rootfs(&record) {
                    Ok(()) => removed.push(path),
                    Err(e) => {
                        tracing::warn!(dir = %path.display(), error = %e, "cannot remove a stray rootfs")
                    }
                }
            }
        }
    }
    removed
}
