//! Container recovery, at start-up and after a restart of the actor:
//!
//! - a container still `Creating` was cut short: its task and shim and its
//!   root filesystem are removed and the record dropped;
//! - a `Created` or `Running` container whose exit is on record (its shim
//!   wrote it, maybe while berthd was down, or shim recovery did for a
//!   shim that died) is `Exited` with that code and time;
//! - every other container runs on, untouched, with the same PID.

use super::actor::{ContainerActor, Containers};
use super::stop::teardown;
use super::store::ContainerState;
use crate::kernel::{claim_cut_short, patiently, short, Recovered, Reply};
use crate::shim::recover::SHIM_DIED_STATUS;
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};
use actix::Message;
use std::time::Duration;

/// Runs the recovery pass (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct RecoverContainers;

impl Message for RecoverContainers {
    type Result = Result<Recovered>;
}

impl Containers {
    /// Records the exit the shim (or shim recovery) left, for a container
    /// that was created or running. True if there was one.
    pub(super) fn settle(&mut self, id: &str) -> Result<bool> {
        let Some(r) = self.records.get(id) else {
            return Ok(false);
        };
        if !matches!(r.state, ContainerState::Created | ContainerState::Running) {
            return Ok(false);
        }
        let bundle = crate::shim::bundle_dir(&self.deps.state, id);
        let Some(exit) = crate::shim::launch::read_exit(&bundle)? else {
            return Ok(false);
        };
        let at = exit
            .exited_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        self.record_exit(id, exit.status, at)?;
        if let Some(note) = crate::shim::recover::read_note(&bundle) {
            if let Some(mut r) = self.records.get(id).cloned() {
                r.message = note;
                self.records.put(r)?;
            }
        }
        Ok(true)
    }

    pub(super) fn recover(&mut self) -> Reply<Self, Recovered> {
        let mut report = Recovered::default();
        let live: Vec<String> = self
            .records
            .iter()
            .filter(|r| matches!(r.state, ContainerState::Created | ContainerState::Running))
            .filter(|r| !self.busy.contains(&r.id))
            .map(|r| r.id.clone())
            .collect();
        for id in live {
            match self.settle(&id) {
                Ok(true) => {
                    let code = self
                        .records
                        .get(&id)
                        .map(|r| r.exit_code)
                        .unwrap_or_default();
                    let how = if code as u32 == SHIM_DIED_STATUS {
                        "exited (or its shim died)"
                    } else {
                        "exited"
                    };
                    report.fixed(format!(
                        "container {}: {how} with {code}, EXITED",
                        short(&id)
                    ));
                }
                Ok(false) => {}
                Err(e) => return Reply::Now(Err(e)),
            }
        }
        let creating = self
            .records
            .iter()
            .filter(|r| r.state == ContainerState::Creating)
            .map(|r| r.id.as_str());
        let cut_short = claim_cut_short(creating, &self.reserved, &mut self.busy);
        report.kept = self.records.len() - cut_short.len();
        if cut_short.is_empty() {
            return Reply::Now(Ok(report));
        }
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
        let work = futures::future::join_all(jobs);
        Reply::Later(Box::pin(wrap_future(work).map(
            move |undone: Vec<(String, Result<(String, _)>)>, act: &mut ContainerActor, _| {
                let me = act.state_mut().ok_or_else(|| {
                    Error::Unavailable("the container actor is restarting; retry".into())
                })?;
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
                Ok(report)
            },
        )))
    }
}
