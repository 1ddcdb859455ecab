//! Sandbox recovery, at start-up and after a restart of the actor:
//!
//! - a pod still `Creating` was cut short (berthd or this actor died while
//!   making it): everything it may have made — pause task and shim,
//!   network (CNI DEL, namespace), pod files — is undone and the record
//!   dropped, so kubelet's retry starts clean;
//! - a `Ready` pod whose pause container is gone (its exit is on record,
//!   from the shim or from shim recovery) becomes `NotReady`;
//! - a pod being stopped or removed when the actor died stays as it was
//!   recorded: kubelet repeats Stop and Remove, which are idempotent.

use super::actor::{SandboxActor, Sandboxes};
use super::files::PodFiles;
use super::run::Undo;
use super::store::SandboxState;
use crate::kernel::{claim_cut_short, short, Recovered, Reply};
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};
use actix::Message;

/// Runs the recovery pass (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct RecoverSandboxes;

impl Message for RecoverSandboxes {
    type Result = Result<Recovered>;
}

impl Sandboxes {
    pub(super) fn recover(&mut self) -> Reply<Self, Recovered> {
        let mut report = Recovered::default();
        let ready: Vec<String> = self
            .records
            .iter()
            .filter(|r| r.state == SandboxState::Ready)
            .map(|r| r.id.clone())
            .collect();
        for id in ready {
            if let Err(e) = self.refresh(&id) {
                return Reply::Now(Err(e));
            }
            if self
                .records
                .get(&id)
                .is_some_and(|r| r.state == SandboxState::NotReady)
            {
                report.fixed(format!(
                    "pod {}: pause container gone, NOTREADY",
                    short(&id)
                ));
            }
        }
        let creating = self
            .records
            .iter()
            .filter(|r| r.state == SandboxState::Creating)
            .map(|r| r.id.as_str());
        let cut_short = claim_cut_short(creating, &self.reserved, &mut self.busy);
        report.kept = self.records.len() - cut_short.len();
        if cut_short.is_empty() {
            return Reply::Now(Ok(report));
        }
        let deps = self.deps.clone();
        let undos = cut_short.clone().into_iter().map(move |id| {
            let undo = Undo {
                files: Some(PodFiles::new(&deps.config.state, &id)),
                deps: deps.clone(),
                id: id.clone(),
                task: true,
                network: true,
            };
            async move { (id, undo.run().await) }
        });
        let work = futures::future::join_all(undos);
        Reply::Later(Box::pin(wrap_future(work).map(
            move |undone: Vec<(String, bool)>, act: &mut SandboxActor, _| {
                let me = act.state_mut().ok_or_else(|| {
                    Error::Unavailable("the sandbox actor is restarting; retry".into())
                })?;
                for (id, clean) in undone {
                    me.busy.remove(&id);
                    if clean {
                        me.records.remove(&id)?;
                        report.fixed(format!("pod {}: half-made, undone", short(&id)));
                    } else {
                        report.fixed(format!(
                            "pod {}: half-made, undo incomplete (kept for the next pass)",
                            short(&id)
                        ));
                    }
                }
                Ok(report)
            },
        )))
    }
}
