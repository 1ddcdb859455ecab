//! The SandboxActor shell: routes messages to the verbs (run.rs, stop.rs,
//! remove.rs, status.rs). The work of a verb (namespaces, CNI, the pause
//! container) runs off the actor, through the other actors; the actor
//! journals each state change before it answers.

use super::messages::*;
use super::store::SandboxRecord;
use crate::image::Images;
use crate::journal::{Journal, Table};
use crate::kernel::{Cx, Handles, Link, Reply, Shell, Subsystem};
use crate::network::Network;
use crate::shim::Shims;
use crate::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

pub type SandboxActor = Shell<Sandboxes>;

/// What the SandboxActor needs: its peers and its configuration.
#[derive(Clone)]
pub struct SandboxDeps {
    pub network: Link<Network>,
    pub shim: Link<Shims>,
    pub image: Link<Images>,
    pub config: SandboxConfig,
    /// Where pods' lifecycle events go.
    pub events: crate::events::Events,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Volatile state: pod files live under `<state>/sandboxes/`.
    pub state: PathBuf,
    /// berth's pause program.
    pub pause_binary: PathBuf,
    /// Where pod cgroups go when kubelet names no parent.
    pub cgroup_parent: String,
    /// Runtime handlers besides "" and "runc".
    pub runtime_handlers: BTreeSet<String>,
    /// Handlers whose runtime cannot run here, with the reason (once the
    /// runtimes were tried: see `HostFacts::unusable`).
    pub unusable_handlers: Arc<std::sync::OnceLock<std::collections::BTreeMap<String, String>>>,
    /// Whether pods may have their own user namespaces here (see
    /// `HostFacts::user_namespaces`).
    pub user_namespaces: crate::host::UsernsProbe,
}

pub struct Sandboxes {
    pub(super) records: Table<SandboxRecord>,
    pub(super) deps: SandboxDeps,
    /// Names reserved by pods being created, and their IDs.
    pub(super) reserved: BTreeMap<String, String>,
    /// Pods with a stop or remove under way, so that a second call for the
    /// same pod waits its turn instead of racing.
    pub(super) busy: BTreeSet<String>,
    /// The sandbox image, once the image actor made it (asked again after
    /// a restart of this actor).
    pub(super) sandbox_image: Option<crate::image::messages::SandboxImage>,
    /// Exits that came while a verb ran on their pod, for it to settle.
    pub(super) pending_exits: BTreeMap<String, TaskExited>,
}

impl Subsystem for Sandboxes {
    const NAME: &'static str = "sandbox";
    type Deps = SandboxDeps;

    fn rebuild(deps: &SandboxDeps, journal: &Arc<dyn Journal>) -> Result<Self> {
        Ok(Sandboxes {
            records: Table::open(journal, Self::NAME)?,
            deps: deps.clone(),
            reserved: BTreeMap::new(),
            busy: BTreeSet::new(),
            sandbox_image: None,
            pending_exits: BTreeMap::new(),
        })
    }

    fn records(&self) -> usize {
        self.records.len()
    }

    fn restarted(&mut self, ctx: &mut actix::Context<SandboxActor>) {
        self.recover().detach(ctx, "sandbox recovery");
    }
}

impl Handles<super::recover::RecoverSandboxes> for Sandboxes {
    type Output = crate::kernel::Recovered;

    fn handle(
        &mut self,
        _msg: super::recover::RecoverSandboxes,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, crate::kernel::Recovered> {
        self.recover()
    }
}

impl Handles<RunPodSandbox> for Sandboxes {
    type Output = String;

    fn handle(&mut self, msg: RunPodSandbox, _cx: Cx<'_, Self>) -> Reply<Self, String> {
        self.run(msg)
    }
}

impl Handles<StopPodSandbox> for Sandboxes {
    type Output = ();

    fn handle(&mut self, msg: StopPodSandbox, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.stop(msg.id)
    }
}

impl Handles<RemovePodSandbox> for Sandboxes {
    type Output = ();

    fn handle(&mut self, msg: RemovePodSandbox, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.remove(msg.id)
    }
}

impl Handles<UpdatePodResources> for Sandboxes {
    type Output = ();

    fn handle(&mut self, msg: UpdatePodResources, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.update_resources(msg)
    }
}

impl Handles<PodSandboxStatus> for Sandboxes {
    type Output = SandboxRecord;

    fn handle(&mut self, msg: PodSandboxStatus, _cx: Cx<'_, Self>) -> Reply<Self, SandboxRecord> {
        Reply::Now(self.status(&msg.id))
    }
}

impl Handles<ListPodSandbox> for Sandboxes {
    type Output = Vec<SandboxRecord>;

    fn handle(
        &mut self,
        msg: ListPodSandbox,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, Vec<SandboxRecord>> {
        Reply::Now(Ok(self.list(&msg)))
    }
}

impl Handles<TaskExited> for Sandboxes {
    type Output = ();

    fn handle(&mut self, msg: TaskExited, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        Reply::Now(self.task_exited(msg))
    }
}

impl Sandboxes {
    /// Publishes `kind` for the pod as `r` has it.
    pub(super) fn publish(&self, r: &SandboxRecord, kind: crate::events::Lifecycle) {
        self.deps.events.publish(|| crate::events::LifecycleEvent {
            id: r.id.clone(),
            pod_id: r.id.clone(),
            kind,
            at_unix_nanos: crate::journal::unix_nanos(),
            sandbox: Some(r.clone()),
            containers: None,
        });
    }
}
