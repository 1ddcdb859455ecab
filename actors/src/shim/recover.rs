//! Shims at start-up ([`RecoverShims`]): every journalled shim is sorted:
//! live ones are reconnected, dead ones are buried (their container ended,
//! an exit record written with status 255), and shims whose start nobody
//! finished (pid 0 in the journal) are ended and forgotten. Bundles and
//! shim processes the journal does not know are removed.

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

use super::health::*;
use super::watch::clear_unowned;

/// The exit status of a task whose shim died before it could tell: the
/// code is unknown, as containerd reports it.
pub const SHIM_DIED_STATUS: u32 = 255;

/// How long recovery waits for one live shim to answer.
pub(super) const RECONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// What recovery writes in the exit record of a task whose shim died.
pub const SHIM_DIED_NOTE: &str =
    "the container's shim died; the container was killed and its exit code is unknown";

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

/// After a shim died: the container is ended and, unless the shim
/// recorded the exit first, recorded as exited with 255. `make_dir` also
/// recreates a bundle that is gone (after a reboot), so the exit is on
/// record somewhere.
pub(super) fn bury(record: &ShimRecord, runtime: Option<&Runtime>, make_dir: bool) -> Result<()> {
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

/// How many shims recovery sorts at once.
pub(super) const RECOVERY_PARALLELISM: usize = 32;

/// What recovery made of one journalled shim.
pub(super) enum Fate {
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

impl Shims {
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
