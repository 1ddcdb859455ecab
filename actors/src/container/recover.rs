//! Container recovery, at start-up and after a restart of the actor:
//!
//! - a container still `Creating` was cut short: its task and shim and its
//!   root filesystem are removed and the record dropped;
//! - a `Created` container whose shim says its process runs was started
//!   by a StartContainer the crash cut short (before its answer was
//!   journalled): it is `Running` with that PID, as the shim knows it;
//! - a `Created` or `Running` container whose exit is on record (its shim
//!   wrote it, maybe while berthd was down, or shim recovery did for a
//!   shim that died) is `Exited` with that code and time;
//! - every other container runs on, untouched, with the same PID.

use super::actor::Containers;
use super::stop::teardown;
use super::store::ContainerState;
use crate::kernel::{claim_cut_short, patiently, short, Recovered, Reply};
use crate::shim::exits::ExitsOf;
use crate::shim::messages::{Exit, TaskExited, TaskInfo, TaskState};
use crate::shim::recover::SHIM_DIED_STATUS;
use crate::Result;
use actix::Message;
use std::collections::BTreeMap;
use std::time::Duration;

/// Runs the recovery pass (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct RecoverContainers;

impl Message for RecoverContainers {
    type Result = Result<Recovered>;
}

/// What recovery learns off the actor: the exits on record, how the
/// undoing of each half-made container went, and what the shims of
/// created containers say of their process.
type Found = (
    Result<BTreeMap<String, TaskExited>>,
    Vec<(String, Result<(String, Option<Exit>)>)>,
    Vec<(String, Result<TaskInfo>)>,
);

impl Containers {
    pub(super) fn recover(&mut self) -> Reply<Self, Recovered> {
        let mut report = Recovered::default();
        let live: Vec<String> = self
            .records
            .iter()
            .filter(|r| matches!(r.state, ContainerState::Created | ContainerState::Running))
            .filter(|r| !self.busy.contains(&r.id))
            .map(|r| r.id.clone())
            .collect();
        let created: Vec<String> = self
            .records
            .iter()
            .filter(|r| r.state == ContainerState::Created && !self.busy.contains(&r.id))
            .map(|r| r.id.clone())
            .collect();
        let creating = self
            .records
            .iter()
            .filter(|r| r.state == ContainerState::Creating)
            .map(|r| r.id.as_str());
        let cut_short = claim_cut_short(creating, &self.reserved, &mut self.busy);
        report.kept = self.records.len() - cut_short.len();
        let deps = self.deps.clone();
        let jobs = cut_short.into_iter().map(move |id| {
            let deps = deps.clone();
            async move {
                let gone = patiently(|| {
                    teardown(deps.clone(), id.clone(), false, 0, Duration::ZERO, true)
                })
                .await;
                (id, gone)
            }
        });
        let shim = self.deps.shim.clone();
        let work = async move {
            // Created or running containers whose exit is on record (their
            // shim wrote it, maybe while berthd was down, or shim recovery
            // did for a shim that died).
            let exits = shim.call(ExitsOf { ids: live }).await;
            let states = created.into_iter().map(|id| {
                let shim = shim.clone();
                async move {
                    let info = shim.call(TaskState { id: id.clone() }).await;
                    (id, info)
                }
            });
            let (undone, states) = futures::join!(
                futures::future::join_all(jobs),
                futures::future::join_all(states)
            );
            (exits, undone, states)
        };
        Reply::later(
            work,
            move |me: &mut Self, (exits, undone, states): Found| {
                for (id, gone) in undone {
                    me.busy.remove(&id);
                    match gone {
                        Ok(_) => {
                            me.records.remove(&id)?;
                            report.fixed(format!("container {}: half-made, undone", short(&id)));
                        }
                        Err(e) => report.fixed(format!(
                            "container {}: half-made, undo failed ({e}); kept for the next pass",
                            short(&id)
                        )),
                    }
                }
                for (id, info) in states {
                    // A shim that cannot say leaves the record as it is.
                    let Ok(info) = info else { continue };
                    if !info.running || info.pid == 0 {
                        continue;
                    }
                    let Some(mut r) = me.records.get(&id).cloned() else {
                        continue;
                    };
                    if r.state != ContainerState::Created {
                        continue;
                    }
                    r.state = ContainerState::Running;
                    r.pid = info.pid;
                    r.started_unix_nanos = crate::journal::unix_nanos();
                    me.records.put(r)?;
                    report.fixed(format!(
                        "container {}: started before the crash recorded it, RUNNING (pid {})",
                        short(&id),
                        info.pid
                    ));
                }
                for (id, exit) in exits? {
                    let code = exit.status;
                    me.task_exited(exit)?;
                    let how = if code == SHIM_DIED_STATUS {
                        "exited (or its shim died)"
                    } else {
                        "exited"
                    };
                    report.fixed(format!(
                        "container {}: {how} with {}, EXITED",
                        short(&id),
                        code as i32
                    ));
                }
                Ok(report)
            },
        )
    }
}
