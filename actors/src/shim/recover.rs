//! Shims nobody is talking to.
//!
//! - A shim that dies (SIGKILL, the OOM killer) leaves its container
//!   without a parent and without anyone to report its exit. The watcher
//!   ([`Shims::watch`], every second) notices, ends the container with the
//!   runtime (`delete --force`) and writes the exit record the shim would
//!   have written, with status 255: the container and sandbox actors read
//!   it as they read any exit. The shim's record stays until the task is
//!   deleted, as for any exited task.
//! - At start-up ([`RecoverShims`]) every journalled shim is sorted: live
//!   ones are reconnected, dead ones are buried as above, and shims whose
//!   start nobody finished (pid 0 in the journal) are ended and forgotten.
//!   Bundles and shim processes the journal does not know are removed.

use super::actor::{Runtime, ShimSupervisor, Shims};
use super::client::ShimClient;
use super::launch::{self, EXIT_FILE};
use super::store::ShimRecord;
use crate::kernel::Reply;
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};
use actix::prelude::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The exit status of a task whose shim died before it could tell: the
/// code is unknown, as containerd reports it.
pub const SHIM_DIED_STATUS: u32 = 255;

/// How often the watcher looks for dead shims.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Watcher rounds between sweeps for shims no record owns.
const SWEEP_EVERY_ROUNDS: u64 = 5;

/// How long recovery waits for one live shim to answer.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sorts every journalled shim at start-up (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct RecoverShims;

impl Message for RecoverShims {
    type Result = Result<ShimReport>;
}

/// What shim recovery found and did, by container ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShimReport {
    /// Serving again: their containers run on, with the same PIDs.
    pub live: Vec<String>,
    /// Gone: their containers were ended and their exits recorded.
    pub dead: Vec<String>,
    /// Never finished starting: ended and forgotten.
    pub undone: Vec<String>,
    /// Bundles or shim processes no record knew: removed.
    pub orphans: Vec<String>,
}

/// Every journalled shim and whether its process is there (admin API).
#[derive(Debug, Clone, Default)]
pub struct ListShims;

impl Message for ListShims {
    type Result = Result<Vec<ShimHealth>>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimHealth {
    pub container_id: String,
    pub pid: u32,
    pub address: String,
    pub bundle: String,
    pub runtime_handler: String,
    pub alive: bool,
    /// The task's exit is on record (the shim's or recovery's).
    pub exited: bool,
}

/// Whether `pid` is the shim of container `id`: a living process (not a
/// zombie) whose command line names the container. After a reboot a
/// journalled pid may belong to anything.
pub fn shim_alive(pid: u32, id: &str) -> bool {
    if pid == 0 {
        return false;
    }
    let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'));
    running
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            c.split(|b| *b == 0)
                .any(|arg| arg == id.as_bytes() || arg.ends_with(format!("/{id}").as_bytes()))
        })
}

/// SIGKILL to `pid`; one that is gone already is fine.
pub(super) fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Ends container `id` in the runtime's state, whatever state it is in.
/// A container the runtime does not know is fine.
pub fn force_delete(runtime: &Runtime, id: &str) {
    let out = std::process::Command::new(&runtime.binary)
        .arg("--root")
        .arg(&runtime.root)
        .args(["delete", "--force", id])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if !err.contains("does not exist") && !err.contains("not exist") {
                tracing::warn!(container = %id, error = %err.trim(), "runtime delete --force failed");
            }
        }
        Err(e) => {
            tracing::warn!(container = %id, error = %e, runtime = %runtime.binary.display(), "cannot run the runtime")
        }
    }
}

/// What recovery writes in the exit record of a task whose shim died.
pub const SHIM_DIED_NOTE: &str =
    "the container's shim died; the container was killed and its exit code is unknown";

/// Removes the cgroup at `cgroups_path` (as in the OCI spec) in every
/// hierarchy, after killing what is still in it: a runtime killed in the
/// middle of `create` can leave the cgroup, and a waiting init process in
/// it, without recording either in its state.
pub fn remove_cgroup(cgroups_path: &str) {
    let rel = cgroups_path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return;
    }
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(rel)];
    for h in std::fs::read_dir(root).into_iter().flatten().flatten() {
        dirs.push(h.path().join(rel));
    }
    let dirs: Vec<PathBuf> = dirs.into_iter().filter(|d| d.is_dir()).collect();
    for d in &dirs {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            sigkill(pid);
        }
    }
    for _ in 0..50 {
        let left: Vec<&PathBuf> = dirs
            .iter()
            .filter(|d| d.is_dir() && std::fs::remove_dir(d).is_err())
            .collect();
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(cgroup = %cgroups_path, "cannot remove a cgroup left by a failed create");
}

/// Writes the exit record a dead shim could not (whole, or not at all),
/// with a note saying why.
pub fn write_exit(bundle: &Path, status: u32, note: &str) -> Result<()> {
    let record = berth_protocol::shim::ExitRecord {
        status,
        exited_at_unix_nanos: crate::journal::unix_nanos().max(0) as u128,
        note: Some(note.to_string()),
    };
    record.write_to(bundle).map_err(|e| {
        Error::Internal(format!(
            "cannot write {}: {e}",
            bundle.join(EXIT_FILE).display()
        ))
    })
}

/// The note recovery left in an exit record, if any.
pub fn read_note(bundle: &Path) -> Option<String> {
    berth_protocol::shim::ExitRecord::read_from(bundle)
        .ok()
        .flatten()?
        .note
}

/// Kills the process in `BUNDLE/shim.pid` if it is the shim of `id`.
pub(super) fn kill_shim_of(bundle: &Path, id: &str) {
    if let Ok(pid) = launch::read_shim_pid(bundle) {
        if shim_alive(pid, id) {
            sigkill(pid);
        }
    }
}

/// After a shim died: the container is ended and, unless the shim
/// recorded the exit first, recorded as exited with 255. `make_dir` also
/// recreates a bundle that is gone (after a reboot), so the exit is on
/// record somewhere.
fn bury(record: &ShimRecord, runtime: Option<&Runtime>, make_dir: bool) -> Result<()> {
    let bundle = PathBuf::from(&record.bundle);
    if let Some(rt) = runtime {
        force_delete(rt, &record.container_id);
    }
    if launch::read_exit(&bundle).ok().flatten().is_some() {
        return Ok(());
    }
    if !bundle.is_dir() {
        if !make_dir {
            return Ok(());
        }
        std::fs::create_dir_all(&bundle)
            .map_err(|e| Error::Internal(format!("create {}: {e}", bundle.display())))?;
    }
    tracing::warn!(container = %record.container_id, pid = record.pid, "shim died: container ended, exit recorded as 255");
    write_exit(&bundle, SHIM_DIED_STATUS, SHIM_DIED_NOTE)
}

impl Shims {
    pub(super) fn runtime_of(&self, record: &ShimRecord) -> Option<Runtime> {
        self.config.runtimes.get(&record.runtime_handler).cloned()
    }

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
    fn unowned(&self) -> BTreeSet<String> {
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
    fn sweep(&mut self, ctx: &mut Context<ShimSupervisor>) {
        let strays = self.unowned();
        if strays.is_empty() {
            return;
        }
        let dir = self.config.state.join("shims");
        let runtimes: Vec<Runtime> = self.config.runtimes.values().cloned().collect();
        ctx.spawn(wrap_future(async move {
            let _ =
                tokio::task::spawn_blocking(move || clear_unowned(&dir, strays, &runtimes)).await;
        }));
    }

    fn find_dead(&mut self, ctx: &mut Context<ShimSupervisor>) {
        let dead: Vec<ShimRecord> = self
            .records
            .iter()
            .filter(|r| r.pid != 0 && !self.buried.contains(&r.container_id))
            .filter(|r| !self.deleting.contains(&r.container_id))
            .filter(|r| !shim_alive(r.pid, &r.container_id))
            .cloned()
            .collect();
        for record in dead {
            self.buried.insert(record.container_id.clone());
            self.clients.remove(&record.container_id);
            let runtime = self.runtime_of(&record);
            let id = record.container_id.clone();
            let bundle = PathBuf::from(&record.bundle);
            let work = async move {
                tokio::task::spawn_blocking(move || bury(&record, runtime.as_ref(), false)).await
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

    pub(super) fn list_shims(&self) -> Vec<ShimHealth> {
        self.records
            .iter()
            .map(|r| ShimHealth {
                container_id: r.container_id.clone(),
                pid: r.pid,
                address: r.address.clone(),
                bundle: r.bundle.clone(),
                runtime_handler: r.runtime_handler.clone(),
                alive: shim_alive(r.pid, &r.container_id),
                exited: Path::new(&r.bundle).join(EXIT_FILE).exists(),
            })
            .collect()
    }

    /// Sorts the journalled shims; with `orphans` (at berthd's start, when
    /// nothing else runs) also removes bundles and shims no record knows.
    /// After a restart of the actor alone that sweep would race the tasks
    /// being created meanwhile, and is not needed: a record is written
    /// before its bundle and removed after it.
    pub(super) fn recover(&mut self, sweep: bool) -> Reply<Self, ShimReport> {
        let records: Vec<(ShimRecord, Option<Runtime>)> = self
            .records
            .iter()
            .map(|r| (r.clone(), self.runtime_of(r)))
            .collect();
        // Only at berthd's start, when nothing else runs; after a restart of
        // the actor alone the sweep runs once the pass is done, against the
        // records as they are then.
        let strays = if sweep {
            self.unowned()
        } else {
            BTreeSet::new()
        };
        let runtimes: Vec<Runtime> = self.config.runtimes.values().cloned().collect();
        let bundles = self.config.state.join("shims");
        let work = async move {
            use futures::StreamExt;
            // Each shim on its own, a few at a time: a node with hundreds
            // of live shims reconnects in parallel, and after a reboot the
            // runtime's deletes do not run one by one.
            let outcomes: Vec<Result<(String, Fate)>> = futures::stream::iter(records)
                .map(|(record, runtime)| sort_shim(record, runtime, sweep))
                .buffer_unordered(RECOVERY_PARALLELISM)
                .collect()
                .await;
            let mut report = ShimReport::default();
            let mut clients = Vec::new();
            for outcome in outcomes {
                let (id, fate) = outcome?;
                match fate {
                    Fate::Live(client) => {
                        clients.push((id.clone(), client));
                        report.live.push(id);
                    }
                    Fate::Dead => report.dead.push(id),
                    Fate::Undone => report.undone.push(id),
                }
            }
            report.orphans =
                tokio::task::spawn_blocking(move || clear_unowned(&bundles, strays, &runtimes))
                    .await
                    .map_err(|e| Error::Internal(format!("recovery task: {e}")))?;
            Ok((report, clients))
        };
        Reply::Later(Box::pin(wrap_future(work).map(
            move |res: Result<(ShimReport, Vec<(String, ShimClient)>)>,
                  act: &mut ShimSupervisor,
                  ctx| {
                let (report, clients) = res?;
                let me = act.state_mut().ok_or_else(|| {
                    crate::kernel::restarting(<Self as crate::kernel::Subsystem>::NAME)
                })?;
                for id in &report.undone {
                    me.records.remove(id)?;
                }
                // A shim whose start was cut short may have come up after
                // its record was undone.
                if !sweep {
                    me.sweep(ctx);
                }
                for id in &report.dead {
                    me.buried.insert(id.clone());
                    if me.records.get(id).is_none() {
                        // Deleted while it was buried.
                        let _ =
                            std::fs::remove_dir_all(crate::shim::bundle_dir(&me.config.state, id));
                    }
                }
                me.clients.extend(clients);
                Ok(report)
            },
        )))
    }
}

/// How many shims recovery sorts at once.
const RECOVERY_PARALLELISM: usize = 32;

/// What recovery made of one journalled shim.
enum Fate {
    /// Serving: reconnected.
    Live(ShimClient),
    /// Gone: its container ended, its exit on record.
    Dead,
    /// Its start never finished: ended and forgotten.
    Undone,
}

/// Sorts one journalled shim (see [`Fate`]). `reboot_ok`: a missing
/// bundle is a reboot's doing (at berthd's start), and the exit is
/// recorded in a new one.
async fn sort_shim(
    record: ShimRecord,
    runtime: Option<Runtime>,
    reboot_ok: bool,
) -> Result<(String, Fate)> {
    let id = record.container_id.clone();
    let blocking = |f: Box<dyn FnOnce() -> Result<()> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Internal(format!("recovery task: {e}")))?
    };
    if record.pid == 0 {
        blocking(Box::new(move || {
            let bundle = PathBuf::from(&record.bundle);
            kill_shim_of(&bundle, &record.container_id);
            if let Some(rt) = runtime {
                force_delete(&rt, &record.container_id);
            }
            let _ = std::fs::remove_file(&record.address);
            let _ = std::fs::remove_dir_all(&bundle);
            Ok(())
        }))
        .await?;
        return Ok((id, Fate::Undone));
    }
    if shim_alive(record.pid, &id) {
        let connect = ShimClient::connect(&id, Path::new(&record.address));
        match tokio::time::timeout(RECONNECT_TIMEOUT, connect).await {
            Ok(Ok(client)) => return Ok((id, Fate::Live(client))),
            _ => {
                tracing::warn!(container = %id, pid = record.pid, "shim alive but not answering: ending it");
                sigkill(record.pid);
            }
        }
    }
    // Only at berthd's start is a missing bundle a reboot's doing; after a
    // restart of the actor it is a deletion's.
    blocking(Box::new(move || bury(&record, runtime.as_ref(), reboot_ok))).await?;
    Ok((id, Fate::Dead))
}

/// For shims and bundles no record owns (see `Shims::unowned`): a shim
/// named by the bundle's pid file is killed, the container deleted from
/// every runtime, the bundle removed. Answers the IDs.
fn clear_unowned(dir: &Path, strays: BTreeSet<String>, runtimes: &[Runtime]) -> Vec<String> {
    for id in &strays {
        let bundle = dir.join(id);
        kill_shim_of(&bundle, id);
        for rt in runtimes {
            force_delete(rt, id);
        }
        let _ = std::fs::remove_dir_all(&bundle);
        tracing::warn!(container = %id, "removed a shim or bundle no record owns");
    }
    strays.into_iter().collect()
}

/// Every berth-shim process whose bundle is under `dir`: (pid, container).
pub fn shim_processes(dir: &Path) -> Vec<(u32, String)> {
    let prefix = format!("{}/", dir.display());
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("berth-shim")) {
            continue;
        }
        let bundle = args
            .windows(2)
            .find(|w| w[0] == "--bundle")
            .map(|w| w[1].clone());
        if let Some(id) = bundle.and_then(|b| b.strip_prefix(&prefix).map(str::to_string)) {
            if shim_alive(pid, &id) {
                found.push((pid, id));
            }
        }
    }
    found
}
