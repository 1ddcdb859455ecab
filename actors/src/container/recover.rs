//! Container recovery, at start-up and after a restart of the actor:
//!
//! - a container still `Creating` was cut short: its task and shim and its
//!   root filesystem are removed and the record dropped;
//! - a `Created` or `Running` container whose exit is on record (its shim
//!   wrote it, maybe while berthd was down, or shim recovery did for a
//!   shim that died) is `Exited` with that code and time;
//! - every other container runs on, untouched, with the same PID.

use super::actor::Containers;
use super::stop::teardown;
use super::store::ContainerState;
use crate::kernel::{claim_cut_short, patiently, short, Recovered, Reply};
use crate::shim::exits::ExitsOf;
use crate::shim::messages::{Exit, TaskExited};
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

/// What recovery learns off the actor: the exits on record, and how the
/// undoing of each half-made container went.
type Found = (
    Result<BTreeMap<String, TaskExited>>,
    Vec<(String, Result<(String, Option<Exit>)>)>,
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
            (exits, futures::future::join_all(jobs).await)
        };
        Reply::later(work, move |me: &mut Self, (exits, undone): Found| {
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
        })
    }
}
