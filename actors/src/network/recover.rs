//! Network recovery: allocations whose pod is gone (a RunPodSandbox that
//! never finished, a removal cut short) get their CNI DEL and lose their
//! namespace; namespace pins no allocation knows are unpinned.

use super::actor::{Network, NetworkActor};
use super::detach::del;
use super::netns;
use super::store::NetworkAllocation;
use crate::kernel::{short, Recovered, Reply, Swept};
use crate::{Error, Result};
use actix::fut::wrap_future;
use actix::{AsyncContext, Message};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Releases every allocation whose pod is not in `pods`.
#[derive(Debug, Clone, Default)]
pub struct RecoverNetwork {
    pub pods: BTreeSet<String>,
}

impl Message for RecoverNetwork {
    type Result = Result<Recovered>;
}

/// Every allocation (admin consistency check).
#[derive(Debug, Clone, Default)]
pub struct ListAllocations;

impl Message for ListAllocations {
    type Result = Result<Vec<NetworkAllocation>>;
}

/// The pods whose network this berthd released lately (fsck).
#[derive(Debug, Clone, Default)]
pub struct ListReleased;

impl Message for ListReleased {
    type Result = Result<Vec<super::store::ReleasedAllocation>>;
}

impl Network {
    pub(super) fn recover(&mut self, pods: BTreeSet<String>) -> Reply<Self, Recovered> {
        let (orphans, kept): (Vec<NetworkAllocation>, Vec<NetworkAllocation>) = self
            .allocations
            .iter()
            .filter(|a| !self.busy.contains(&a.sandbox_id))
            .cloned()
            .partition(|a| !pods.contains(&a.sandbox_id) && !a.removed);
        let mut pins: BTreeSet<PathBuf> =
            kept.iter().map(|a| PathBuf::from(&a.netns_path)).collect();
        pins.extend(
            self.busy
                .iter()
                .map(|id| netns::pin_path(&self.config.netns_dir, id)),
        );
        let strays = list_strays(&self.config.netns_dir, &pins);
        let plugins = self.config.plugins();
        let kept = kept.len();
        let work = async move {
            let jobs = orphans.into_iter().map(|a| {
                let plugins = plugins.clone();
                async move {
                    let id = a.sandbox_id.clone();
                    let pin = PathBuf::from(&a.netns_path);
                    let needs_del = a.attached || !a.list.is_null();
                    let deleted = if needs_del {
                        del(plugins, a).await
                    } else {
                        Ok(())
                    };
                    let unpinned = tokio::task::spawn_blocking(move || netns::remove(&pin))
                        .await
                        .map_err(|e| Error::Internal(format!("netns task: {e}")))
                        .and_then(|r| r);
                    (id, deleted.and(unpinned))
                }
            });
            let released = futures::future::join_all(jobs).await;
            let strays = tokio::task::spawn_blocking(move || remove_pins(strays))
                .await
                .map_err(|e| Error::Internal(format!("netns task: {e}")))?;
            Ok((released, strays))
        };
        Reply::later(work, move |me: &mut Self, res: Result<Swept>| {
            let (released, strays) = res?;
            let mut report = Recovered {
                kept,
                fixed: Vec::new(),
            };
            for (id, outcome) in released {
                match outcome {
                    Ok(()) => {
                        me.release(&id)?;
                        report.fixed(format!("network of pod {}: no pod, released", short(&id)));
                    }
                    Err(e) => {
                        if let Some(mut a) = me.allocations.get(&id).cloned() {
                            a.removed = true;
                            me.allocations.put(a)?;
                        }
                        report.fixed(format!(
                                "network of pod {}: no pod, DEL failed ({e}), retried in the background",
                                short(&id)
                            ));
                    }
                }
            }
            for pin in strays {
                report.fixed(format!("netns {}: no allocation, removed", pin.display()));
            }
            Ok(report)
        })
    }
}

/// Namespace pins under `dir` not in `known`. Listed on the actor,
/// against the allocations as they are then: a namespace being made has
/// its allocation already, so what this finds has no owner.
fn list_strays(dir: &Path, known: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let mut strays: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| !known.contains(p))
                .collect()
        })
        .unwrap_or_default();
    // A pod's user namespace pinned without its network namespace (a
    // creation cut short): named by the pin its network one would have,
    // whose removal unpins both.
    for e in std::fs::read_dir(netns::userns_dir(dir))
        .into_iter()
        .flatten()
        .flatten()
    {
        let as_netns = dir.join(e.file_name());
        if !known.contains(&as_netns) && !strays.contains(&as_netns) {
            strays.push(as_netns);
        }
    }
    strays
}

/// Unpins and removes `pins`; answers those that went.
fn remove_pins(pins: Vec<PathBuf>) -> Vec<PathBuf> {
    pins.into_iter()
        .filter(|p| match netns::remove(p) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(netns = %p.display(), error = %e, "cannot remove a stray namespace");
                false
            }
        })
        .collect()
}

impl Network {
    /// Removes namespace pins no allocation owns: left by namespace work
    /// that a restart of this actor cut short and that finished after the
    /// pod's network was undone. Runs on a timer.
    pub(super) fn sweep_pins(&mut self, ctx: &mut actix::Context<NetworkActor>) {
        let known: BTreeSet<PathBuf> = self
            .allocations
            .iter()
            .map(|a| PathBuf::from(&a.netns_path))
            .collect();
        let strays = list_strays(&self.config.netns_dir, &known);
        if strays.is_empty() {
            return;
        }
        ctx.spawn(wrap_future(async move {
            if let Ok(gone) = tokio::task::spawn_blocking(move || remove_pins(strays)).await {
                for p in gone {
                    tracing::warn!(netns = %p.display(), "removed a namespace no allocation owns");
                }
            }
        }));
    }
}
