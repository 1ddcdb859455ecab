//! Shims at start-up ([`RecoverShims`]): every journalled shim is sorted:
//! live ones are reconnected, dead ones are buried (their container ended,
//! an exit record written with status 255), and shims whose start nobody
//! finished (pid 0 in the journal) are ended and forgotten. Bundles and
//! shim processes the journal does not know are removed.

use super::actor::{Runtime, ShimSupervisor, Shims};
use super::client::ShimClient;
use super::host::{Os, Processes};
use super::launch::{self, EXIT_FILE};
use super::store::ShimRecord;
use crate::kernel::Reply;
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};
use actix::prelude::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
pub(super) fn bury(
    procs: &impl Processes,
    record: &ShimRecord,
    runtime: Option<&Runtime>,
    make_dir: bool,
) -> Result<()> {
    let bundle = PathBuf::from(&record.bundle);
    if let Some(rt) = runtime {
        procs.force_delete(rt, &record.container_id);
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
pub(super) enum Fate<C> {
    /// Serving: reconnected.
    Live(C),
    /// Gone: its container ended, its exit on record.
    Dead,
    /// Its start never finished: ended and forgotten.
    Undone,
}

/// Sorts one journalled shim (see [`Fate`]). `reboot_ok`: a missing
/// bundle is a reboot's doing (at berthd's start), and the exit is
/// recorded in a new one.
async fn sort_shim<P: Processes>(
    procs: Arc<P>,
    record: ShimRecord,
    runtime: Option<Runtime>,
    reboot_ok: bool,
) -> Result<(String, Fate<P::Conn>)> {
    let id = record.container_id.clone();
    let blocking = |f: Box<dyn FnOnce() -> Result<()> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Internal(format!("recovery task: {e}")))?
    };
    if record.pid == 0 {
        blocking(Box::new(move || {
            let bundle = PathBuf::from(&record.bundle);
            procs.kill_shim_of(&bundle, &record.container_id);
            if let Some(rt) = runtime {
                procs.force_delete(&rt, &record.container_id);
            }
            let _ = std::fs::remove_file(&record.address);
            let _ = std::fs::remove_file(berth_protocol::shim::attach_socket(Path::new(
                &record.address,
            )));
            let _ = std::fs::remove_dir_all(&bundle);
            Ok(())
        }))
        .await?;
        return Ok((id, Fate::Undone));
    }
    if procs.alive(record.pid, record.shim_id()) {
        let connect = procs.connect(&record);
        match tokio::time::timeout(RECONNECT_TIMEOUT, connect).await {
            Ok(Ok(conn)) => return Ok((id, Fate::Live(conn))),
            _ => {
                tracing::warn!(container = %id, pid = record.pid, "shim alive but not answering: ending it");
                procs.kill(record.pid);
            }
        }
    }
    // Only at berthd's start is a missing bundle a reboot's doing; after a
    // restart of the actor it is a deletion's.
    blocking(Box::new(move || {
        bury(procs.as_ref(), &record, runtime.as_ref(), reboot_ok)
    }))
    .await?;
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
            let outcomes: Vec<Result<(String, Fate<ShimClient>)>> = futures::stream::iter(records)
                .map(|(record, runtime)| sort_shim(Arc::new(Os), record, runtime, sweep))
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
            report.orphans = tokio::task::spawn_blocking(move || {
                clear_unowned(&Os, &bundles, strays, &runtimes)
            })
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
                me.revive_v2(&clients);
                me.clients.extend(clients);
                Ok(report)
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    //! Recovery's decisions against a fake node: which shims are
    //! reconnected, which buried, which undone, and what each leaves on
    //! disk, without a shim, runc or a signal sent.

    use super::*;
    use berth_protocol::shim::{ExitRecord, SHIM_PID_FILE};
    use futures::future::BoxFuture;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    /// Shims that live (by pid), shims that answer (by container), and
    /// what was done to the node, in order.
    #[derive(Default)]
    struct FakeNode {
        alive: BTreeSet<u32>,
        answering: BTreeSet<String>,
        done: Mutex<Vec<String>>,
    }

    impl FakeNode {
        fn done(&self) -> Vec<String> {
            self.done.lock().map(|d| d.clone()).unwrap_or_default()
        }
        fn note(&self, what: String) {
            if let Ok(mut d) = self.done.lock() {
                d.push(what);
            }
        }
    }

    impl Processes for FakeNode {
        type Conn = String;

        fn alive(&self, pid: u32, _id: &str) -> bool {
            self.alive.contains(&pid)
        }
        fn kill(&self, pid: u32) {
            self.note(format!("kill {pid}"));
        }
        fn force_delete(&self, runtime: &Runtime, id: &str) {
            self.note(format!("delete {id} in {}", runtime.root.display()));
        }
        fn connect(&self, record: &ShimRecord) -> BoxFuture<'static, Result<String>> {
            let id = &record.container_id;
            self.note(format!("connect {id}"));
            let answer = if self.answering.contains(id) {
                Ok(format!("conn to {id}"))
            } else {
                Err(Error::Unavailable(format!("{id} does not answer")))
            };
            Box::pin(async move { answer })
        }
    }

    fn runc() -> Runtime {
        Runtime {
            binary: PathBuf::from("runc"),
            root: PathBuf::from("/rt"),
            native_exec: true,
            timeout: std::time::Duration::from_secs(120),
            v2_shim: None,
        }
    }

    /// A journalled shim with its bundle (and socket) under `dir`.
    fn record(dir: &Path, id: &str, pid: u32) -> ShimRecord {
        let bundle = dir.join(id);
        std::fs::create_dir_all(&bundle).expect("bundle");
        let address = dir.join(format!("{id}.sock"));
        std::fs::write(&address, "").expect("socket");
        ShimRecord {
            container_id: id.to_string(),
            pid,
            address: address.display().to_string(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        }
    }

    fn exit_of(record: &ShimRecord) -> Option<ExitRecord> {
        ExitRecord::read_from(Path::new(&record.bundle)).expect("exit file readable")
    }

    async fn sort(node: FakeNode, r: &ShimRecord, reboot: bool) -> (Fate<String>, Vec<String>) {
        let node = Arc::new(node);
        let (id, fate) = sort_shim(node.clone(), r.clone(), Some(runc()), reboot)
            .await
            .expect("sorted");
        assert_eq!(id, r.container_id);
        (fate, node.done())
    }

    #[tokio::test]
    async fn a_live_answering_shim_is_reconnected_and_nothing_is_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = record(dir.path(), "c1", 41);
        let node = FakeNode {
            alive: [41].into(),
            answering: ["c1".to_string()].into(),
            ..Default::default()
        };
        let (fate, done) = sort(node, &r, true).await;
        assert!(matches!(fate, Fate::Live(ref c) if c == "conn to c1"));
        assert_eq!(done, vec!["connect c1"]);
        assert_eq!(exit_of(&r), None, "a live task has no exit on record");
        assert!(Path::new(&r.address).exists());
    }

    #[tokio::test]
    async fn a_live_shim_that_does_not_answer_is_killed_and_buried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = record(dir.path(), "c2", 42);
        let node = FakeNode {
            alive: [42].into(),
            ..Default::default()
        };
        let (fate, done) = sort(node, &r, false).await;
        assert!(matches!(fate, Fate::Dead));
        assert_eq!(done, vec!["connect c2", "kill 42", "delete c2 in /rt"]);
        let exit = exit_of(&r).expect("exit recorded");
        assert_eq!(exit.status, SHIM_DIED_STATUS);
        assert_eq!(exit.note.as_deref(), Some(SHIM_DIED_NOTE));
    }

    #[tokio::test]
    async fn a_dead_shim_ends_its_container_and_records_255() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = record(dir.path(), "c3", 43);
        let (fate, done) = sort(FakeNode::default(), &r, false).await;
        assert!(matches!(fate, Fate::Dead));
        assert_eq!(done, vec!["delete c3 in /rt"], "no connect, no kill");
        assert_eq!(exit_of(&r).map(|e| e.status), Some(SHIM_DIED_STATUS));
    }

    #[tokio::test]
    async fn an_exit_the_shim_recorded_before_dying_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = record(dir.path(), "c4", 44);
        let own = ExitRecord {
            status: 3,
            exited_at_unix_nanos: 1_000,
            note: None,
        };
        own.write_to(Path::new(&r.bundle)).expect("write");
        let (fate, _) = sort(FakeNode::default(), &r, false).await;
        assert!(matches!(fate, Fate::Dead));
        assert_eq!(exit_of(&r), Some(own));
    }

    #[tokio::test]
    async fn a_bundle_gone_is_made_again_only_after_a_reboot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = record(dir.path(), "c5", 45);
        std::fs::remove_dir_all(&r.bundle).expect("rm");
        // After a restart of the actor alone: the bundle went with a
        // deletion, and stays gone.
        let (fate, _) = sort(FakeNode::default(), &r, false).await;
        assert!(matches!(fate, Fate::Dead));
        assert!(!Path::new(&r.bundle).exists());
        // At berthd's start: a reboot emptied the state; the exit is kept
        // on record in a new bundle.
        let (fate, _) = sort(FakeNode::default(), &r, true).await;
        assert!(matches!(fate, Fate::Dead));
        assert_eq!(exit_of(&r).map(|e| e.status), Some(SHIM_DIED_STATUS));
    }

    #[tokio::test]
    async fn a_start_cut_short_is_undone_with_its_late_shim() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Journalled with pid 0; the shim came up afterwards and wrote
        // its pid file.
        let r = record(dir.path(), "c6", 0);
        std::fs::write(Path::new(&r.bundle).join(SHIM_PID_FILE), "46\n").expect("pid");
        let node = FakeNode {
            alive: [46].into(),
            ..Default::default()
        };
        let (fate, done) = sort(node, &r, true).await;
        assert!(matches!(fate, Fate::Undone));
        assert_eq!(done, vec!["kill 46", "delete c6 in /rt"]);
        assert!(!Path::new(&r.bundle).exists(), "bundle removed");
        assert!(!Path::new(&r.address).exists(), "socket removed");
    }

    #[tokio::test]
    async fn a_start_cut_short_before_its_shim_kills_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = record(dir.path(), "c7", 0);
        // A pid file naming a process that is not this task's shim (the
        // pid was reused): it must not be killed.
        std::fs::write(Path::new(&r.bundle).join(SHIM_PID_FILE), "47\n").expect("pid");
        let (fate, done) = sort(FakeNode::default(), &r, false).await;
        assert!(matches!(fate, Fate::Undone));
        assert_eq!(done, vec!["delete c7 in /rt"]);
        assert!(!Path::new(&r.bundle).exists());
    }

    #[test]
    fn unowned_bundles_are_ended_in_every_runtime_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stray = record(dir.path(), "s1", 0);
        std::fs::write(Path::new(&stray.bundle).join(SHIM_PID_FILE), "51\n").expect("pid");
        let kept = record(dir.path(), "k1", 52);
        let node = FakeNode {
            alive: [51, 52].into(),
            ..Default::default()
        };
        let other = Runtime {
            binary: PathBuf::from("crun"),
            root: PathBuf::from("/rt2"),
            native_exec: true,
            timeout: std::time::Duration::from_secs(120),
            v2_shim: None,
        };
        let cleared = clear_unowned(
            &node,
            dir.path(),
            ["s1".to_string()].into(),
            &[runc(), other],
        );
        assert_eq!(cleared, vec!["s1"]);
        assert_eq!(
            node.done(),
            vec!["kill 51", "delete s1 in /rt", "delete s1 in /rt2"]
        );
        assert!(!Path::new(&stray.bundle).exists());
        assert!(Path::new(&kept.bundle).exists(), "an owned bundle stays");
    }
}
