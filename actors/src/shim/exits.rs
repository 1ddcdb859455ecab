//! Task exits, told to the actors that own tasks (pods, containers) by the
//! ShimSupervisor alone: it owns the shims' bundles and their exit
//! records, and no other actor reads them.
//!
//! An exit is published once per incarnation of this actor, to every
//! [`ExitSink`] handed in at start: when the shim reports it (its TaskExit
//! event, forwarded by berthd's events endpoint as [`ExitReported`]), or,
//! failing that, when the exit record turns up on the next tick of a
//! one-second timer (an event lost while berthd was down or restarting,
//! or a record written for a shim that died). Owners ignore exits of tasks
//! that are not theirs and take repeats as no news. Recovery asks for the
//! exits on record at once ([`ExitsOf`]).

use super::actor::{ShimSupervisor, Shims};
use super::messages::TaskExited;
use crate::kernel::Reply;
use crate::Result;
use actix::{AsyncContext, Context, Message};
use berth_protocol::shim::ExitRecord;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Where published exits go: an owner of tasks (the node hands in one for
/// the sandbox actor and one for the container actor).
pub type ExitSink = Arc<dyn Fn(TaskExited) -> BoxFuture<'static, ()> + Send + Sync>;

/// The sinks, filled by the node once every actor is spawned (the owners
/// start after this actor); kept across restarts of this actor.
pub type ExitSinks = Arc<OnceLock<Vec<ExitSink>>>;

/// How often exit records with no report are looked for.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A shim reported its task's exit (a TaskExit event).
#[derive(Debug, Clone)]
pub struct ExitReported {
    pub id: String,
    /// The status the event carried, used when no record is on disk.
    pub status: u32,
    /// When it exited, as the event says (0: unknown).
    pub exited_at_unix_nanos: i64,
}

impl Message for ExitReported {
    type Result = Result<()>;
}

/// The exits on record of these tasks, by task (for recovery, which must
/// know them before berthd serves).
#[derive(Debug, Clone)]
pub struct ExitsOf {
    pub ids: Vec<String>,
}

impl Message for ExitsOf {
    type Result = Result<BTreeMap<String, TaskExited>>;
}

pub(super) fn exited(id: &str, record: ExitRecord) -> TaskExited {
    TaskExited {
        id: id.to_string(),
        status: record.status,
        exited_at_unix_nanos: i64::try_from(record.exited_at_unix_nanos).unwrap_or(i64::MAX),
        note: record.note,
    }
}

/// The exit on record in `bundle`; an unreadable record counts as none
/// (and is logged): the task is then seen as running until its shim says
/// otherwise.
fn on_record(id: &str, bundle: &Path) -> Option<TaskExited> {
    match ExitRecord::read_from(bundle) {
        Ok(record) => record.map(|r| exited(id, r)),
        Err(e) => {
            tracing::warn!(task = %id, error = %e, "unreadable exit record");
            None
        }
    }
}

impl Shims {
    /// Starts the timer that publishes exits nobody reported.
    pub(super) fn look_for_exits(&mut self, ctx: &mut Context<ShimSupervisor>) {
        ctx.run_interval(LOOK_EVERY, |act, ctx| {
            if let Some(me) = act.state_mut() {
                me.publish_recorded(ctx);
            }
        });
    }

    fn publish_recorded(&mut self, ctx: &mut Context<ShimSupervisor>) {
        let found: Vec<TaskExited> = self
            .records
            .iter()
            .filter(|r| !self.published.contains(&r.container_id))
            .filter(|r| !self.deleting.contains(&r.container_id))
            .filter_map(|r| on_record(&r.container_id, Path::new(&r.bundle)))
            .collect();
        for exit in found {
            self.publish(exit, ctx);
        }
    }

    /// Tells every sink, once.
    pub(super) fn publish(&mut self, exit: TaskExited, ctx: &mut Context<ShimSupervisor>) {
        if !self.published.insert(exit.id.clone()) {
            return;
        }
        tracing::debug!(task = %exit.id, status = exit.status, "task exited");
        let Some(sinks) = self.sinks.get() else {
            return;
        };
        for sink in sinks {
            ctx.spawn(actix::fut::wrap_future(sink(exit.clone())));
        }
    }

    pub(super) fn exit_reported(
        &mut self,
        msg: ExitReported,
        ctx: &mut Context<ShimSupervisor>,
    ) -> Reply<Self, ()> {
        let Some(record) = self.records.get(&msg.id) else {
            return Reply::Now(Ok(()));
        };
        let recorded = on_record(&msg.id, Path::new(&record.bundle));
        if recorded.is_none() && record.api == super::client::TaskApi::V2 {
            // berthd holds a v2 task's output: its exit is told once the
            // output is in the log, and put on record for later.
            return self.v2_exit(msg, record.bundle.clone());
        }
        let exit = recorded.unwrap_or(TaskExited {
            id: msg.id.clone(),
            status: msg.status,
            exited_at_unix_nanos: msg.exited_at_unix_nanos,
            note: None,
        });
        self.publish(exit, ctx);
        Reply::Now(Ok(()))
    }

    pub(super) fn exits_of(&self, ids: Vec<String>) -> Reply<Self, BTreeMap<String, TaskExited>> {
        let found = ids
            .into_iter()
            .filter_map(|id| {
                let record = self.records.get(&id)?;
                on_record(&id, Path::new(&record.bundle)).map(|e| (id, e))
            })
            .collect();
        Reply::Now(Ok(found))
    }
}

/// For unit tests of the owners of tasks: an [`ExitsOf`] answer in which
/// only `task` has exited, with `status` at `at`.
#[cfg(test)]
pub fn exited_only(
    task: String,
    status: u32,
    at: i64,
) -> impl Fn(ExitsOf) -> Result<BTreeMap<String, TaskExited>> + Send + Sync + 'static {
    move |m: ExitsOf| {
        Ok(m.ids
            .into_iter()
            .filter(|id| *id == task)
            .map(|id| {
                let exit = TaskExited {
                    id: id.clone(),
                    status,
                    exited_at_unix_nanos: at,
                    note: None,
                };
                (id, exit)
            })
            .collect())
    }
}
