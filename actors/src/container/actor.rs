//! The ContainerActor shell: each message is routed to its verb, one file
//! per verb (create.rs, start.rs, stop.rs, remove.rs, status.rs,
//! exec_sync.rs, update.rs, reopen_log.rs, usage.rs; exit.rs for what an
//! exit does). The work runs off the actor, through the image, sandbox and
//! shim actors; the actor journals each state change before it answers.

use super::messages::*;
use super::store::ContainerRecord;
use crate::image::Images;
use crate::journal::{Journal, Table};
use crate::kernel::{Cx, Handles, Link, Reply, Shell, Subsystem};
use crate::sandbox::messages::TaskExited;
use crate::sandbox::Sandboxes;
use crate::shim::Shims;
use crate::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

pub type ContainerActor = Shell<Containers>;

#[derive(Clone)]
pub struct ContainerDeps {
    pub sandbox: Link<Sandboxes>,
    pub image: Link<Images>,
    pub shim: Link<Shims>,
    /// berth's state directory (bundles, to read exit records).
    pub state: PathBuf,
    /// Where logs go for pods that name no log directory.
    pub default_log_dir: PathBuf,
    /// Where containers' writable layers are (`<dir>/<id>/upper`).
    pub rootfs_dir: PathBuf,
    /// What this node offers containers (capabilities, hugetlb, rro).
    pub host: Arc<crate::host::HostFacts>,
    /// Where containers' lifecycle events go.
    pub events: crate::events::Events,
    /// Whether CRIU works here (checkpoint and restore), probed once.
    pub criu: Arc<super::checkpoint::criu::CriuProbe>,
}

pub struct Containers {
    pub(super) records: Table<ContainerRecord>,
    pub(super) deps: ContainerDeps,
    /// Names reserved by containers being created, and their IDs.
    pub(super) reserved: BTreeMap<String, String>,
    /// Containers with a start, stop or remove under way.
    pub(super) busy: BTreeSet<String>,
    /// Exits that came while a verb ran on their container, for it to
    /// settle.
    pub(super) pending_exits: BTreeMap<String, crate::shim::messages::TaskExited>,
}

impl Subsystem for Containers {
    const NAME: &'static str = "container";
    type Deps = ContainerDeps;

    fn rebuild(deps: &ContainerDeps, journal: &Arc<dyn Journal>) -> Result<Self> {
        Ok(Containers {
            records: Table::open(journal, Self::NAME)?,
            deps: deps.clone(),
            reserved: BTreeMap::new(),
            busy: BTreeSet::new(),
            pending_exits: BTreeMap::new(),
        })
    }

    fn records(&self) -> usize {
        self.records.len()
    }

    fn restarted(&mut self, ctx: &mut actix::Context<ContainerActor>) {
        self.recover().detach(ctx, "container recovery");
    }
}

impl Handles<super::recover::RecoverContainers> for Containers {
    type Output = crate::kernel::Recovered;

    fn handle(
        &mut self,
        _msg: super::recover::RecoverContainers,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, crate::kernel::Recovered> {
        self.recover()
    }
}

impl Handles<CreateContainer> for Containers {
    type Output = String;

    fn handle(&mut self, msg: CreateContainer, _cx: Cx<'_, Self>) -> Reply<Self, String> {
        self.create(msg)
    }
}

impl Handles<StartContainer> for Containers {
    type Output = ();

    fn handle(&mut self, msg: StartContainer, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.start(msg.id)
    }
}

impl Handles<StopContainer> for Containers {
    type Output = ();

    fn handle(&mut self, msg: StopContainer, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.stop(msg.id, msg.timeout)
    }
}

impl Handles<RemoveContainer> for Containers {
    type Output = ();

    fn handle(&mut self, msg: RemoveContainer, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.remove(msg.id)
    }
}

impl Handles<ContainerStatus> for Containers {
    type Output = ContainerRecord;

    fn handle(&mut self, msg: ContainerStatus, _cx: Cx<'_, Self>) -> Reply<Self, ContainerRecord> {
        Reply::Now(self.status(&msg.id))
    }
}

impl Handles<ListContainers> for Containers {
    type Output = Vec<ContainerRecord>;

    fn handle(
        &mut self,
        msg: ListContainers,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, Vec<ContainerRecord>> {
        Reply::Now(Ok(self.list(&msg)))
    }
}

impl Handles<PodContainers> for Containers {
    type Output = ();

    fn handle(&mut self, msg: PodContainers, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.pod_containers(msg)
    }
}

impl Handles<TaskExited> for Containers {
    type Output = ();

    fn handle(&mut self, msg: TaskExited, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        Reply::Now(self.task_exited(msg))
    }
}

impl Handles<ExecSync> for Containers {
    type Output = ExecOutput;

    fn handle(&mut self, msg: ExecSync, _cx: Cx<'_, Self>) -> Reply<Self, ExecOutput> {
        self.exec_sync(msg)
    }
}

impl Handles<RunningContainer> for Containers {
    type Output = String;

    fn handle(&mut self, msg: RunningContainer, _cx: Cx<'_, Self>) -> Reply<Self, String> {
        self.running_container(msg)
    }
}

impl Handles<ExecIn> for Containers {
    type Output = u32;

    fn handle(&mut self, msg: ExecIn, _cx: Cx<'_, Self>) -> Reply<Self, u32> {
        self.exec_in(msg)
    }
}

impl Handles<AttachTo> for Containers {
    type Output = ();

    fn handle(&mut self, msg: AttachTo, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.attach_to(msg)
    }
}

impl Handles<UpdateContainerResources> for Containers {
    type Output = ();

    fn handle(&mut self, msg: UpdateContainerResources, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.update_resources(msg)
    }
}

impl Handles<CheckpointContainer> for Containers {
    type Output = ();

    fn handle(&mut self, msg: CheckpointContainer, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.checkpoint(msg)
    }
}

impl Handles<ReopenContainerLog> for Containers {
    type Output = ();

    fn handle(&mut self, msg: ReopenContainerLog, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        self.reopen_log(msg.id)
    }
}

impl Handles<ContainerStats> for Containers {
    type Output = Vec<ContainerUsage>;

    fn handle(
        &mut self,
        msg: ContainerStats,
        _cx: Cx<'_, Self>,
    ) -> Reply<Self, Vec<ContainerUsage>> {
        self.container_stats(msg)
    }
}

impl Handles<PodStats> for Containers {
    type Output = Vec<PodUsage>;

    fn handle(&mut self, msg: PodStats, _cx: Cx<'_, Self>) -> Reply<Self, Vec<PodUsage>> {
        self.pod_stats(msg)
    }
}

impl Containers {
    /// The full ID of a running container, or why there is none.
    pub(super) fn running(&self, id: &str) -> Result<String> {
        let full = self
            .resolve(id)
            .ok_or_else(|| crate::Error::NotFound(format!("container {id:?} not found")))?;
        let running = self
            .records
            .get(&full)
            .is_some_and(|r| r.state == super::store::ContainerState::Running);
        if !running {
            return Err(crate::Error::FailedPrecondition(format!(
                "container {full} is not running"
            )));
        }
        Ok(full)
    }
}

impl Containers {
    /// Publishes `kind` for container `id` of pod `pod_id`, with the pod's
    /// containers as they are now.
    pub(super) fn publish(&self, id: &str, pod_id: &str, kind: crate::events::Lifecycle) {
        self.deps.events.publish(|| crate::events::LifecycleEvent {
            id: id.to_string(),
            pod_id: pod_id.to_string(),
            kind,
            at_unix_nanos: crate::journal::unix_nanos(),
            sandbox: None,
            containers: Some(
                self.records
                    .iter()
                    .filter(|r| {
                        r.sandbox_id == pod_id && r.state != super::store::ContainerState::Creating
                    })
                    .cloned()
                    .collect(),
            ),
        });
    }

    /// Drops the record of a removed container and says so.
    pub(super) fn forget(&mut self, id: &str) -> Result<()> {
        if let Some(r) = self.records.remove(id)? {
            self.publish(id, &r.sandbox_id, crate::events::Lifecycle::Deleted);
        }
        Ok(())
    }
}
