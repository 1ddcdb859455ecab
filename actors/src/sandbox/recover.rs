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

use super::actor::Sandboxes;
use super::files::PodFiles;
use super::run::Undo;
use super::store::SandboxState;
use crate::kernel::{claim_cut_short, short, Recovered, Reply};
use crate::shim::exits::ExitsOf;
use crate::Result;
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
        let creating = self
            .records
            .iter()
            .filter(|r| r.state == SandboxState::Creating)
            .map(|r| r.id.as_str());
        let cut_short = claim_cut_short(creating, &self.reserved, &mut self.busy);
        report.kept = self.records.len() - cut_short.len();
        let deps = self.deps.clone();
        let undos = cut_short.into_iter().map(move |id| {
            let undo = Undo {
                files: Some(PodFiles::new(&deps.config.state, &id)),
                deps: deps.clone(),
                id: id.clone(),
                task: true,
                network: true,
            };
            async move { (id, undo.run().await) }
        });
        let shim = self.deps.shim.clone();
        let work = async move {
            // Ready pods whose pause container exited (on record, from the
            // shim or from shim recovery) are not ready any more.
            let exits = shim.call(ExitsOf { ids: ready }).await;
            (exits, futures::future::join_all(undos).await)
        };
        Reply::later(
            work,
            move |me: &mut Self, (exits, undone): (Result<_>, Vec<(String, bool)>)| {
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
                let exits: std::collections::BTreeMap<String, _> = exits?;
                for id in exits.keys() {
                    me.mark_exited(id)?;
                    report.fixed(format!("pod {}: pause container gone, NOTREADY", short(id)));
                }
                Ok(report)
            },
        )
    }
}
