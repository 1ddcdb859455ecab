//! The watcher, every second: a shim that died (SIGKILL, the OOM killer)
//! leaves its container without a parent and without anyone to report its
//! exit; the watcher ends the container with the runtime (`delete --force`)
//! and writes the exit record the shim would have written, with status 255,
//! which is then published as any exit is. Every few rounds it also sweeps
//! shims and bundles no record owns (work a restart cut short).

use super::actor::{Runtime, ShimSupervisor, Shims};
use super::store::ShimRecord;
use actix::fut::{wrap_future, ActorFutureExt};
use actix::prelude::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::health::*;
use super::host::{Os, Processes};
use super::recover::bury;

/// How often the watcher looks for dead shims.
pub(super) const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Watcher rounds between sweeps for shims no record owns.
pub(super) const SWEEP_EVERY_ROUNDS: u64 = 5;

/// For shims and bundles no record owns (see `Shims::unowned`): a shim
/// named by the bundle's pid file is killed, the container deleted from
/// every runtime, the bundle removed. Answers the IDs.
pub(super) fn clear_unowned(
    procs: &impl Processes,
    dir: &Path,
    strays: BTreeSet<String>,
    runtimes: &[Runtime],
) -> Vec<String> {
    for id in &strays {
        let bundle = dir.join(id);
        procs.kill_shim_of(&bundle, id);
        for rt in runtimes {
            procs.force_delete(rt, id);
        }
        let _ = std::fs::remove_dir_all(&bundle);
        tracing::warn!(container = %id, "removed a shim or bundle no record owns");
    }
    strays.into_iter().collect()
}

impl Shims {
    /// Starts the dead-shim watcher, and every few rounds the sweep of
    /// shims and bundles no record owns.
    pub(super) fn watch(&mut self, ctx: &mut Context<ShimSupervisor>) {
        let mut round = 0u64;
        ctx.run_interval(WATCH_EVERY, move |act, ctx| {
            round += 1;
            if let Some(me) = act.state_mut() {
                me.find_dead(ctx);
                if round.is_multiple_of(SWEEP_EVERY_ROUNDS) {
                    me.sweep(ctx);
                }
            }
        });
    }

    /// Shim processes and bundles no record owns: the processes are
    /// killed here, and their IDs answered for [`clear_unowned`]. Listed on
    /// the actor, against the records as they are then: a task being
    /// created has its record before its bundle or shim exists, and a
    /// deleted one loses its record last.
    pub(super) fn unowned(&self) -> BTreeSet<String> {
        let dir = self.config.state.join("shims");
        let mut strays: BTreeSet<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|id| self.records.get(id).is_none())
                    .collect()
            })
            .unwrap_or_default();
        for (pid, id) in shim_processes(&dir) {
            if self.records.get(&id).is_none() {
                sigkill(pid);
                strays.insert(id);
            }
        }
        strays
    }

    /// Ends shims and removes bundles no record owns: left by work a
    /// restart of this actor cut short, which finished after its record
    /// was undone. Runs on a timer, and after a restart.
    pub(super) fn sweep(&mut self, ctx: &mut Context<ShimSupervisor>) {
        let strays = self.unowned();
        if strays.is_empty() {
            return;
        }
        let dir = self.config.state.join("shims");
        let runtimes: Vec<Runtime> = self.config.runtimes.values().cloned().collect();
        ctx.spawn(wrap_future(async move {
            let _ =
                tokio::task::spawn_blocking(move || clear_unowned(&Os, &dir, strays, &runtimes))
                    .await;
        }));
    }

    /// The watched shims that died since the last look. A shim is checked
    /// through /proc once, when first seen; after that its pidfd alone
    /// tells, all of them in one poll.
    fn dead_shims(&mut self) -> Vec<ShimRecord> {
        let watched: Vec<ShimRecord> = self
            .records
            .iter()
            .filter(|r| r.pid != 0 && !self.buried.contains(&r.container_id))
            .filter(|r| !self.deleting.contains(&r.container_id))
            .cloned()
            .collect();
        let ids: BTreeSet<&str> = watched.iter().map(|r| r.container_id.as_str()).collect();
        self.pidfds.retain(|id, _| ids.contains(id.as_str()));
        let mut dead = Vec::new();
        for r in &watched {
            let known = self
                .pidfds
                .get(&r.container_id)
                .is_some_and(|(pid, _)| *pid == r.pid);
            if known {
                continue;
            }
            match shim_pidfd(r.pid, r.shim_id()) {
                Some(fd) => {
                    self.pidfds.insert(r.container_id.clone(), (r.pid, fd));
                }
                None => {
                    self.pidfds.remove(&r.container_id);
                    dead.push(r.clone());
                }
            }
        }
        let polled: Vec<(&String, &std::os::fd::OwnedFd)> =
            self.pidfds.iter().map(|(id, (_, fd))| (id, fd)).collect();
        let gone = ended(&polled.iter().map(|(_, fd)| *fd).collect::<Vec<_>>());
        let gone: Vec<String> = polled
            .iter()
            .zip(gone)
            .filter(|(_, g)| *g)
            .map(|((id, _), _)| (*id).clone())
            .collect();
        for id in gone {
            self.pidfds.remove(&id);
            if let Some(r) = watched.iter().find(|r| r.container_id == id) {
                dead.push(r.clone());
            }
        }
        dead
    }

    pub(super) fn find_dead(&mut self, ctx: &mut Context<ShimSupervisor>) {
        let dead = self.dead_shims();
        for record in dead {
            self.buried.insert(record.container_id.clone());
            self.clients.remove(&record.container_id);
            let runtime = self.runtime_of(&record);
            let id = record.container_id.clone();
            let bundle = PathBuf::from(&record.bundle);
            let work = async move {
                tokio::task::spawn_blocking(move || bury(&Os, &record, runtime.as_ref(), false))
                    .await
            };
            ctx.spawn(
                wrap_future(work).map(move |done, act: &mut ShimSupervisor, _| {
                    if !matches!(done, Ok(Ok(()))) {
                        tracing::warn!(container = %id, "could not clean up after a dead shim");
                    }
                    // Deleted meanwhile: what the burial wrote goes too.
                    if act
                        .state_mut()
                        .is_some_and(|me| me.records.get(&id).is_none())
                    {
                        let _ = std::fs::remove_dir_all(&bundle);
                    }
                }),
            );
        }
    }
}
